"""bench.bn_statistics: recomputed batch-norm statistics are the plain average over the patches."""

from __future__ import annotations

import torch

from bench.bn_statistics import recomputed
from bench.quality import headline_figures


def test_recomputed_statistics_average_each_patch_and_leave_the_network_alone() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 1), torch.nn.BatchNorm3d(2))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    patches = [torch.randn(1, 1, 4, 5, 6) * (i + 1) + i for i in range(3)]
    out = recomputed(net, patches)
    with torch.no_grad():
        features = [net[0](x) for x in patches]
    means = torch.stack([f.mean(dim=(0, 2, 3, 4)) for f in features]).mean(0)
    variances = torch.stack([f.var(dim=(0, 2, 3, 4), unbiased=True) for f in features]).mean(0)
    torch.testing.assert_close(out[1].running_mean, means)
    torch.testing.assert_close(out[1].running_var, variances)
    assert not out.training
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_demo3d_figures_count_the_seeds_that_pass() -> None:
    runs = {
        "0": {"final": 0.97, "min_after_warmup": 0.8, "pass": True, "test": {"mean_dice": 0.96}},
        "1": {"final": 0.96, "min_after_warmup": 0.3, "pass": False, "test": {"mean_dice": 0.95}},
    }
    fig = headline_figures({"demo3d_15min": {"runs": runs}})
    assert fig["demo3d_15min_passed"] == "1/2"
    assert fig["demo3d_15min_seed1_min_after2"] == 0.3
