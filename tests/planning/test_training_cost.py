"""Training-step cost measured on the meta device: memory grows with batch and patch, training keeps
more than inference, backward costs about twice the forward."""

from __future__ import annotations

import math

import pytest
import torch

from unet_med.inferers import OverlapTileInferer, _Geometry
from unet_med.networks import create_unet
from unet_med.networks.shapes import min_input_size
from unet_med.planning import device_throughput, training_cost


@pytest.mark.parametrize(("preset", "dims"), [("paper", 2), ("cicek3d", 3)])
def test_training_memory_exceeds_inference_and_grows_linearly_with_the_batch(preset, dims):
    net = create_unet(preset, base_width=4, out_channels=3)
    probe = min_input_size((8,) * dims, net.spec)
    cost = training_cost(net, probe)
    inference = OverlapTileInferer()._activation_bytes_per_voxel(net, _Geometry(net, dims), 1, None)
    assert cost.bytes_per_voxel > 1.5 * inference  # activations are kept for the backward pass
    m1, m2, m3 = (cost.memory_bytes(probe, b) for b in (1, 2, 3))
    assert m2 - m1 == pytest.approx(m3 - m2) == pytest.approx(cost.bytes_per_voxel * math.prod(probe))
    params = sum(p.numel() * 4 for p in net.parameters())
    assert cost.fixed_bytes >= 3 * params  # parameters, gradients, optimiser states
    assert 2.0 < cost.flops_per_voxel / cost.forward_flops_per_voxel < 4.0
    assert cost.step_flops(probe, 2) == pytest.approx(2 * math.prod(probe) * cost.flops_per_voxel)
    assert all(p.device.type == "cpu" for p in net.parameters())  # measured on a copy


def test_device_throughput_is_a_positive_rate():
    torch.manual_seed(0)
    assert device_throughput("cpu", spatial_dims=2, width=8) > 1e6
