"""Batch-norm statistics recomputed before validation: the plain average of the patches'
statistics under the current weights, repeatable, and invisible to the training's random stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from torch import nn

from unet_med.handlers import BatchNormRecalibration
from unet_med.handlers.batch_norm import recompute_batch_norm_statistics


def small_network(norm: bool = True) -> nn.Module:
    torch.manual_seed(0)
    layers = [nn.Conv3d(1, 3, 1)] + ([nn.BatchNorm3d(3)] if norm else []) + [nn.ReLU(), nn.Conv3d(3, 2, 1)]
    return nn.Sequential(*layers)


class Patches(torch.utils.data.Dataset):
    """Items as a MONAI training chain gives them (a list of one sample dict)."""

    def __init__(self, n: int = 5) -> None:
        g = torch.Generator().manual_seed(1)
        self.images = [torch.randn(1, 4, 5, 6, generator=g) * (i + 1) + i for i in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> list[dict]:
        return [{"image": self.images[index], "label": torch.zeros(1, 4, 5, 6)}]


def test_recomputed_statistics_are_the_average_of_each_patch_and_restore_mode_and_momentum():
    net = small_network()
    net.eval()
    patches = [Patches().images[i].unsqueeze(0) for i in range(3)]
    weights = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("1.")}
    recompute_batch_norm_statistics(net, patches)
    with torch.no_grad():
        features = [net[0](x) for x in patches]
    means = torch.stack([f.mean((0, 2, 3, 4)) for f in features]).mean(0)
    variances = torch.stack([f.var((0, 2, 3, 4)) for f in features]).mean(0)
    torch.testing.assert_close(net[1].running_mean, means)
    torch.testing.assert_close(net[1].running_var, variances)
    assert not net.training and net[1].momentum == 0.1
    for key, value in weights.items():
        torch.testing.assert_close(net.state_dict()[key], value)


def validate_once(seed: int) -> tuple[torch.Tensor, tuple[float, float]]:
    """One validation with the handler attached; the running mean after it and the next draws
    of torch's and numpy's global generators (seeded 7 before the validation)."""
    net = small_network()
    evaluator = Engine(lambda engine, batch: None)
    BatchNormRecalibration(net, Patches(), patches=4, seed=seed).attach(evaluator)
    torch.manual_seed(7)
    np.random.seed(7)
    evaluator.run([0], max_epochs=1)
    return net[1].running_mean.clone(), (float(torch.rand(1)), float(np.random.rand()))


def test_handler_recomputes_before_validation_repeatably_without_moving_the_random_stream():
    first, draws = validate_once(seed=3)
    again, _ = validate_once(seed=3)
    other, _ = validate_once(seed=4)
    assert not torch.equal(first, torch.zeros(3))  # recomputed (a fresh layer's mean is 0)
    torch.testing.assert_close(first, again)
    assert not torch.allclose(first, other)
    torch.manual_seed(7)
    np.random.seed(7)
    assert draws == (float(torch.rand(1)), float(np.random.rand()))


def test_handler_is_a_no_op_without_batch_norm_or_patches():
    net = small_network(norm=False)
    assert not BatchNormRecalibration(net, Patches(), patches=8).enabled
    off = BatchNormRecalibration(small_network(), Patches(), patches=0)
    assert not off.enabled
    state = {k: v.clone() for k, v in off.network.state_dict().items()}
    off(Engine(lambda engine, batch: None))
    for key, value in off.network.state_dict().items():
        torch.testing.assert_close(value, state[key])
    with pytest.raises(ValueError, match="patches must be >= 0"):
        BatchNormRecalibration(net, Patches(), patches=-1)
