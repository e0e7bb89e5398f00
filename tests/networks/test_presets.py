"""The named presets: the papers' sizes, parameter and layer counts, widths, dropout, VGG16 weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from unet_med.networks import (
    PRESETS,
    count_conv_layers,
    count_parameters,
    create_unet,
    load_vgg16_features,
)


def conv(cin: int, cout: int, k: int, dims: int, norm: bool = False) -> int:
    """Parameters of one convolution with bias (plus batch-norm scale and shift)."""
    return cin * cout * k**dims + cout + (2 * cout if norm else 0)


def paper_count(in_ch: int, classes: int) -> int:
    # Fig. 1: 64..1024, two 3x3 convs per level, 2x2 up-convs halving channels, 1x1 head.
    w = [64, 128, 256, 512, 1024]
    n, c = 0, in_ch
    for width in w:
        n += conv(c, width, 3, 2) + conv(width, width, 3, 2)
        c = width
    for skip in reversed(w[:-1]):
        n += conv(c, skip, 2, 2) + conv(2 * skip, skip, 3, 2) + conv(skip, skip, 3, 2)
        c = skip
    return n + conv(64, classes, 1, 2)


def keras_count(in_ch: int, classes: int) -> int:
    # Same widths; the 2x2 conv after up-sampling has the up-conv's parameters; the seed adds a
    # 3x3 conv to 2 channels before the 1x1.
    return paper_count(in_ch, 2) - conv(64, 2, 1, 2) + conv(64, 2, 3, 2) + conv(2, classes, 1, 2)


def vgg16_encoder_count(in_ch: int = 3) -> int:
    n, c = 0, in_ch
    for width, convs in zip([64, 128, 256, 512, 512], [2, 2, 3, 3, 3]):
        for _ in range(convs):
            n += conv(c, width, 3, 2)
            c = width
    return n


def vgg16_count(in_ch: int, classes: int) -> int:
    # Seed 003: up-sample (no weights), concat with the skip, two 3x3 convs per decoder level.
    decoder = 0
    for concat, width in [(512 + 512, 512), (256 + 512, 256), (128 + 256, 128), (64 + 128, 64)]:
        decoder += conv(concat, width, 3, 2) + conv(width, width, 3, 2)
    return vgg16_encoder_count(in_ch) + decoder + conv(64, classes, 1, 2)


def cicek_count(in_ch: int, classes: int) -> int:
    # Cicek 2016, Fig. 1: 32->64, 64->128, 128->256, 256->512 with batch norm; up-convs keep
    # the channels, the decoder halves them after concatenation.
    n, c = 0, in_ch
    for inner, width in [(32, 64), (64, 128), (128, 256), (256, 512)]:
        n += conv(c, inner, 3, 3, True) + conv(inner, width, 3, 3, True)
        c = width
    for skip, width in [(256, 256), (128, 128), (64, 64)]:
        n += conv(c, c, 2, 3) + conv(c + skip, width, 3, 3, True) + conv(width, width, 3, 3, True)
        c = width
    return n + conv(64, classes, 1, 3)


PAPER_FIGURES = {
    # preset: (in, classes, input size, output size, documented parameters, counted, conv layers)
    "paper": (1, 2, (572, 572), (388, 388), 31_030_658, paper_count, 23),
    "keras": (1, 1, (256, 256), (256, 256), 31_031_685, keras_count, 24),
    "vgg16": (3, 21, (512, 512), (512, 512), None, vgg16_count, 22),
    "cicek3d": (1, 3, (132, 132, 116), (44, 44, 28), None, cicek_count, 18),
}


@pytest.mark.parametrize("name", sorted(PAPER_FIGURES))
def test_preset_paper_sizes_and_parameter_counts(name: str) -> None:
    in_ch, classes, size, out_size, documented, counted, convs = PAPER_FIGURES[name]
    with torch.device("meta"):
        net = create_unet(name, in_channels=in_ch, out_channels=classes)
    assert net.output_size(size) == out_size
    expected = counted(in_ch, classes)
    if documented is not None:
        assert expected == documented
    assert count_parameters(net) == expected
    assert count_conv_layers(net) == convs


def test_cicek3d_has_about_19_million_parameters() -> None:
    with torch.device("meta"):
        net = create_unet("cicek3d", out_channels=3)
    assert round(count_parameters(net) / 1e6, 2) == 19.07


def test_vgg16_encoder_has_the_torchvision_layout() -> None:
    with torch.device("meta"):
        net = create_unet("vgg16", in_channels=3, out_channels=21)
    assert count_parameters(net.encoder) == vgg16_encoder_count() == 14_714_688


def test_vgg16_features_state_dict_loads_into_the_encoder(tmp_path) -> None:
    net = create_unet("vgg16", in_channels=3, out_channels=2)
    # torchvision's vgg16().features indices of the 13 convolutions, shapes as torchvision has them
    indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    convs = [m for m in net.encoder.modules() if isinstance(m, nn.Conv2d)]
    generator = torch.Generator().manual_seed(0)
    state = {}
    for index, m in zip(indices, convs):
        state[f"features.{index}.weight"] = torch.randn(m.weight.shape, generator=generator)
        state[f"features.{index}.bias"] = torch.randn(m.bias.shape, generator=generator)
    path = tmp_path / "vgg16_features.pth"
    torch.save(state, path)
    load_vgg16_features(net, path)
    for index, m in zip(indices, convs):
        assert torch.equal(m.weight, state[f"features.{index}.weight"])

    gray = create_unet("vgg16", in_channels=1, out_channels=2)
    load_vgg16_features(gray, state)
    first = next(m for m in gray.encoder.modules() if isinstance(m, nn.Conv2d))
    assert torch.allclose(first.weight, state["features.0.weight"].sum(1, keepdim=True))

    narrow = create_unet("vgg16", in_channels=3, out_channels=2, base_width=8)
    with pytest.raises(ValueError, match="features.0.weight has shape"):
        load_vgg16_features(narrow, state)


def test_base_width_override_scales_widths_but_keeps_the_architecture() -> None:
    full = create_unet("cicek3d", out_channels=3)
    small = create_unet("cicek3d", out_channels=3, base_width=8)
    assert count_conv_layers(small) == count_conv_layers(full)
    assert small.spec == full.spec
    widths = [m.out_channels for m in small.encoder.modules() if isinstance(m, nn.Conv3d)]
    assert widths == [8, 16, 16, 32, 32, 64, 64, 128]


def test_unknown_preset_and_override_list_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown U-Net preset 'resnet'.*cicek3d.*paper"):
        create_unet("resnet")
    with pytest.raises(ValueError, match=r"unknown override\(s\) \['width'\].*base_width"):
        create_unet("paper", width=8)


def test_dropout_is_at_the_bottleneck_only_for_paper_and_levels_4_5_for_keras() -> None:
    def dropout_levels(net: nn.Module) -> list[int]:
        return [
            i
            for i, level in enumerate(net.encoder)
            if any(isinstance(m, nn.Dropout) for m in level.modules())
        ]

    assert dropout_levels(create_unet("paper", base_width=4)) == [4]
    assert dropout_levels(create_unet("keras", base_width=4)) == [3, 4]
    assert dropout_levels(create_unet("cicek3d", base_width=4)) == []


def test_every_preset_is_listed() -> None:
    assert sorted(PRESETS) == ["cicek3d", "keras", "paper", "vgg16"]


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_depth_keeps_the_presets_shallowest_levels(preset):
    from unet_med.networks import preset_depth

    full = preset_depth(preset)
    deep = create_unet(preset, base_width=8)
    assert create_unet(preset, base_width=8, depth=full).config == deep.config
    shallow = create_unet(preset, base_width=8, depth=full - 1)
    assert shallow.spec.poolings == full - 1
    assert shallow.config["widths"] == deep.config["widths"][:-1]
    if deep.config["padding"] == "valid":
        assert all(s < d for s, d in zip(shallow.margin(), deep.margin()))  # less context
    with pytest.raises(ValueError, match="depth"):
        create_unet(preset, depth=full + 1)
