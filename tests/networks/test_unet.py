"""The generic U-Net: forward sizes, crop-and-concat in the decoder, He init, TorchScript and export,
its config."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unet_med.networks import PRESETS, create_unet


@pytest.mark.parametrize(
    "name,size",
    [("paper", (188, 204)), ("keras", (32, 48)), ("vgg16", (32, 64)), ("cicek3d", (92, 100, 108))],
)
def test_forward_matches_the_size_arithmetic(name: str, size: tuple[int, ...]) -> None:
    base = {"cicek3d": 4}.get(name, 8)
    net = create_unet(name, in_channels=2, out_channels=3, base_width=base).eval()
    with torch.no_grad():
        y = net(torch.randn(1, 2, *size))
    assert tuple(y.shape) == (1, 3, *net.output_size(size))


def test_illegal_input_size_names_the_nearest_legal_sizes() -> None:
    net = create_unet("paper", base_width=4)
    with pytest.raises(
        ValueError, match=r"axis 1: 190 is illegal, nearest legal sizes 188 \(below\) and 204"
    ):
        net(torch.zeros(1, 1, 188, 190))


def test_decoder_levels_see_the_encoder_map_cropped_to_their_size() -> None:
    net = create_unet("paper", base_width=2).eval()
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for up in net.decoder:
        up.concat.register_forward_hook(
            lambda m, args, out: seen.append((tuple(args[0].shape[2:]), tuple(out.shape[2:])))
        )
    with torch.no_grad():
        net(torch.zeros(1, 1, 572, 572))
    # Fig. 1: skips of 64, 136, 280, 568 are cropped to 56, 104, 200, 392.
    assert seen == [
        ((64, 64), (56, 56)),
        ((136, 136), (104, 104)),
        ((280, 280), (200, 200)),
        ((568, 568), (392, 392)),
    ]


def test_he_init_matches_sqrt_2_over_fan_in() -> None:
    torch.manual_seed(0)
    net = create_unet("paper", base_width=16)
    checked = 0
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and m.weight.numel() >= 2000:
            fan_in = m.in_channels * math.prod(m.kernel_size)
            expected = math.sqrt(2.0 / fan_in)
            assert abs(m.weight.std().item() - expected) / expected < 0.10
            checked += 1
    assert checked >= 10
    # a 3x3 conv over 64 channels: N = 9 x 64 = 576
    paper = create_unet("paper")
    conv64 = paper.encoder[0].conv1.conv
    assert conv64.in_channels == 64
    assert abs(conv64.weight.std().item() - math.sqrt(2 / 576)) / math.sqrt(2 / 576) < 0.10


@pytest.mark.parametrize(
    "name,size", [("paper", (188, 188)), ("cicek3d", (92, 92, 100)), ("keras", (32, 32))]
)
def test_scripted_network_matches_eager(name: str, size: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    net = create_unet(name, out_channels=2, base_width=4).eval()
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        eager = net(x)
        scripted = torch.jit.script(net)(x)
    assert torch.allclose(eager, scripted, atol=1e-5)


def test_exported_network_matches_eager() -> None:
    torch.manual_seed(0)
    net = create_unet("paper", out_channels=2, base_width=4).eval()
    x = torch.randn(1, 1, 188, 204)
    program = torch.export.export(net, (x,))
    with torch.no_grad():
        assert torch.allclose(program.module()(x), net(x), atol=1e-5)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_config_rebuilds_the_same_architecture(name: str) -> None:
    import json

    from unet_med.networks import UNet

    net = create_unet(name, in_channels=2, out_channels=3, base_width=4)
    rebuilt = UNet(**json.loads(json.dumps(net.config)))
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    assert rebuilt.spec == net.spec
