"""What one training step of a U-Net costs: memory (bytes) and compute (FLOPs, seconds).

The plan sizes patches and batches with these numbers. Both are measured on PyTorch's ``meta``
device (shapes only, no data, no compute), so planning a 3D network of any width takes a
fraction of a second:

- memory: the live tensors of a forward pass with autograd on, the loss and the backward pass
  (activations kept for the gradients, the gradients themselves), tracked by the same
  live-tensor counter that sizes the inference tiles (:class:`unet_med.inferers.PeakMemory`),
  at batch 1 and 2; the difference is the memory of one more sample, the rest is fixed.
  The parameters and two optimiser states per parameter (Adam's moments; SGD momentum needs one)
  are added, plus 10% for allocator slack;
- compute: ``torch.utils.flop_counter.FlopCounterMode`` counts the FLOPs of forward + backward;
  :func:`device_throughput` times a convolution on the device to turn FLOPs into seconds.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["TrainingCost", "device_throughput", "training_cost"]

# Parameters, their gradients' optimiser states (Adam: two moments) -- bytes per parameter byte.
_OPTIMISER_STATES = 2
_SLACK = 1.1


@dataclass(frozen=True)
class TrainingCost:
    """Cost of training steps of one network.

    Attributes:
        fixed_bytes: memory that does not grow with the batch (parameters, gradients, optimiser
            states).
        bytes_per_voxel: memory per input voxel of one sample (activations kept for the
            backward pass, their gradients).
        flops_per_voxel: FLOPs of forward + backward per input voxel of one sample.
        forward_flops_per_voxel: FLOPs of a forward pass alone per input voxel (inference).
    """

    fixed_bytes: float
    bytes_per_voxel: float
    flops_per_voxel: float
    forward_flops_per_voxel: float

    def memory_bytes(self, input_size: Sequence[int], batch_size: int) -> float:
        """Peak memory (bytes) of a training step on ``batch_size`` patches of ``input_size`` voxels."""
        return self.fixed_bytes + batch_size * math.prod(input_size) * self.bytes_per_voxel

    def step_flops(self, input_size: Sequence[int], batch_size: int) -> float:
        """FLOPs of one training step (forward + backward)."""
        return batch_size * math.prod(input_size) * self.flops_per_voxel


def _meta_copy(network: nn.Module) -> nn.Module:
    return copy.deepcopy(network).to("meta").train()


def _step_peak(network: nn.Module, probe: Sequence[int], batch: int, in_channels: int) -> float:
    """Peak bytes of live tensors created by one forward + loss + backward pass on ``meta``."""
    from unet_med.inferers import PeakMemory

    net = _meta_copy(network)
    tracker = PeakMemory()
    x = torch.zeros((batch, in_channels, *probe), device="meta")
    with tracker:
        # softmax + mean stands in for the loss: it keeps a probability map as Dice+CE does
        net(x).softmax(1).mean().backward()
    return float(tracker.peak + x.numel() * x.element_size())


def _flops(network: nn.Module, probe: Sequence[int], in_channels: int, backward: bool) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    net = _meta_copy(network)
    x = torch.zeros((1, in_channels, *probe), device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        if backward:
            net(x).mean().backward()
        else:
            with torch.no_grad():
                net(x)
    return float(counter.get_total_flops())


def training_cost(network: nn.Module, probe_size: Sequence[int], *, in_channels: int = 1) -> TrainingCost:
    """Measure :class:`TrainingCost` on a legal input tile ``probe_size`` (voxels).

    The per-voxel numbers barely depend on the tile (activations scale with its volume), so a
    small legal tile is enough.
    """
    probe = tuple(int(s) for s in probe_size)
    voxels = math.prod(probe)
    peak1 = _step_peak(network, probe, 1, in_channels)
    peak2 = _step_peak(network, probe, 2, in_channels)
    per_sample = max(peak2 - peak1, 0.0)
    params = sum(p.numel() * p.element_size() for p in network.parameters())
    fixed = max(peak1 - per_sample, 0.0) + params * (1 + _OPTIMISER_STATES)
    return TrainingCost(
        fixed_bytes=_SLACK * fixed,
        bytes_per_voxel=_SLACK * per_sample / voxels,
        flops_per_voxel=_flops(network, probe, in_channels, backward=True) / voxels,
        forward_flops_per_voxel=_flops(network, probe, in_channels, backward=False) / voxels,
    )


def device_throughput(device: str | torch.device = "cpu", *, spatial_dims: int = 3, width: int = 16) -> float:
    """Sustained FLOP/s of forward + backward convolutions on ``device``, timed (best of 3 after
    one warm-up run, which pays the kernel selection).

    A ``width``-channel 3x3(x3) convolution stands in for the network's layers; the network's
    wider layers run somewhat faster per FLOP, so step times derived from this are on the safe
    (slow) side.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = torch.device(device)
    conv = (nn.Conv2d if spatial_dims == 2 else nn.Conv3d)(width, width, 3).to(device)
    shape = (2, width) + ((128, 128) if spatial_dims == 2 else (32, 32, 32))
    x = torch.randn(shape, device=device, requires_grad=True)
    counter = FlopCounterMode(display=False)
    with counter:
        conv(x).sum().backward()  # also the warm-up
    flops = float(counter.get_total_flops())
    best = math.inf
    for _ in range(3):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        conv(x).sum().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return flops / max(best, 1e-9)
