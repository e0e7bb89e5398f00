"""Batch-norm statistics recomputed for the current weights before each validation.

With one patch per training step (the CPU plans), batch norm trains on each patch's own
statistics, and validation uses the running averages PyTorch keeps of them: mostly the last 10-20
patches, two thirds of them centred on background, from weights that have since moved. On the 3D
demo those averages alone swung the validation Dice of one set of weights between 0.63 and 0.94
(``python -m bench.bn_statistics``; docs/BENCHMARKS.md, "Model quality", 3D demo). Recomputing them
from patches centred on labelled voxels ("precise BN", Wu & Johnson 2021, on the foreground
patches the Dice is about) removed those dips.

The recomputed statistics stay in the network: the checkpoint saved after the validation, and so
the delivered model, carries them, and training goes on updating them as before. Nothing changes
for a network without batch norm (the 2D paper bundle), or with ``patches=0``.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from torch import nn

log = logging.getLogger(__name__)


def batch_norm_layers(network: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The batch-norm layers of ``network`` (a DDP wrapper's module included)."""
    return [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def recompute_batch_norm_statistics(network: nn.Module, patches: Sequence[torch.Tensor]) -> None:
    """Replace the running statistics of every batch-norm layer of ``network`` by the plain
    average over ``patches`` of each patch's statistics under the current weights.

    The network's training mode and the layers' momentum are restored afterwards; the weights are
    not touched (no gradients).
    """
    layers = batch_norm_layers(network)
    if not layers or not patches:
        return
    momenta = [layer.momentum for layer in layers]
    was_training = network.training
    try:
        for layer in layers:
            layer.reset_running_stats()
            layer.momentum = None  # cumulative average over the forward passes below
        network.train()
        with torch.no_grad():
            for patch in patches:
                network(patch)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        network.train(was_training)


class BatchNormRecalibration:
    """Before each validation, recompute the batch-norm statistics of ``network`` from
    ``patches`` training patches drawn from ``dataset`` (the training data with a chain that
    centres every patch on a labelled voxel, see
    :func:`~unet_med.data.datasets.with_transform`).

    The patches are drawn anew at each validation with a generator seeded from ``seed`` and the
    number of earlier validations, so a run is repeatable. Attach to the evaluator (a bundle lists it first
    among ``validate#handlers``).

    Args:
        network: the trained network (its device is the patches' device).
        dataset: items are dicts (or lists of dicts, one per sample) with ``image_key``.
        patches: training patches per recomputation; 0 turns the handler off.
        seed: base seed of the patch draw.
    """

    def __init__(
        self, network: nn.Module, dataset: Any, patches: int = 16, seed: int = 0, image_key: str = "image"
    ) -> None:
        if int(patches) < 0:
            raise ValueError(f"patches must be >= 0, got {patches}")
        self.network = network
        self.dataset = dataset
        self.patches = int(patches)
        self.seed = int(seed)
        self.image_key = image_key
        self.calls = 0

    @property
    def enabled(self) -> bool:
        return self.patches > 0 and bool(batch_norm_layers(self.network)) and len(self.dataset) > 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def draw(self) -> list[torch.Tensor]:
        """This call's patches, as ``1 x C x ...`` tensors on the network's device: the items and
        the chain's random state both come from ``seed`` and the number of earlier calls."""
        seed = (self.seed * 1_000_003 + self.calls) % 2**32
        generator = torch.Generator().manual_seed(seed)
        transform = getattr(self.dataset, "transform", None)
        if hasattr(transform, "set_random_state"):
            transform.set_random_state(seed=seed)
        device = next(self.network.parameters()).device
        patches = []
        for index in torch.randint(len(self.dataset), (self.patches,), generator=generator).tolist():
            item = self.dataset[index]
            sample = item[0] if isinstance(item, Sequence) and not isinstance(item, Mapping) else item
            patches.append(torch.as_tensor(sample[self.image_key]).unsqueeze(0).to(device))
        return patches

    def __call__(self, engine: Engine) -> None:
        if not self.enabled:
            return
        # the module inside a DistributedDataParallel wrapper: its forward would start buffer
        # collectives; every rank draws the same patches, so the ranks agree without them
        network = getattr(self.network, "module", self.network)
        # the patch draw must not move the generators the training chain and the trainer draw
        # from, so a run's training is the same with and without this handler
        with _preserved_global_randomness():
            recompute_batch_norm_statistics(network, self.draw())
        self.calls += 1
        log.debug("batch-norm statistics recomputed from %d patches", self.patches)


@contextlib.contextmanager
def _preserved_global_randomness() -> Iterator[None]:
    """Restore torch's, numpy's and Python's global random state after the block."""
    torch_state = torch.random.get_rng_state()
    numpy_state = np.random.get_state()
    python_state = random.getstate()
    try:
        yield
    finally:
        torch.random.set_rng_state(torch_state)
        np.random.set_state(numpy_state)
        random.setstate(python_state)
