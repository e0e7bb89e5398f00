"""Named U-Net presets: the paper's 2D U-Net, the Keras port, the VGG16-encoder U-Net and the
3D U-Net of Cicek et al., each a configuration of the one generic :class:`UNet`."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unet_med.networks.unet import UNet

__all__ = [
    "Preset",
    "PRESETS",
    "create_unet",
    "preset_depth",
    "count_parameters",
    "count_conv_layers",
    "preset_table",
    "load_vgg16_features",
]

_WIDTH_KEYS = ("widths", "inner_widths", "decoder_widths", "up_widths")


@dataclass(frozen=True)
class Preset:
    """A named architecture.

    Args:
        name: the preset's name.
        spatial_dims: 2 or 3.
        description: one line for tables and ``--help``.
        paper_input_size: the input size the source document uses.
        base_width: the width of the first convolution; ``base_width=`` overrides scale every
            width by the same factor, keeping the architecture.
        kwargs: :class:`UNet` arguments.
        paper_out_channels: the number of classes the source document uses.
    """

    name: str
    spatial_dims: int
    description: str
    paper_input_size: tuple[int, ...]
    base_width: int
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    paper_out_channels: int = 2


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "paper",
            2,
            "Ronneberger et al. 2015: valid 3x3 convs, 2x2 up-convs, crop-and-concat",
            (572, 572),
            64,
            dict(
                widths=(64, 128, 256, 512, 1024),
                padding="valid",
                upsampling="transposed",
                norm="none",
                dropout=0.5,
            ),
        ),
        Preset(
            "keras",
            2,
            "Keras port (seed 000): same padding, upsample + 2x2 conv, dropout 0.5 on levels 4-5",
            (256, 256),
            64,
            dict(
                widths=(64, 128, 256, 512, 1024),
                padding="same",
                upsampling="upsample",
                norm="none",
                dropout=0.5,
                dropout_levels=(3, 4),
                head_widths=(2,),
            ),
            paper_out_channels=1,
        ),
        Preset(
            "vgg16",
            2,
            "VGG16-encoder U-Net (seed 003): 2,2,3,3,3 convs, same padding, upsample + concat",
            (512, 512),
            64,
            dict(
                widths=(64, 128, 256, 512, 512),
                convs_per_block=(2, 2, 3, 3, 3),
                padding="same",
                upsampling="nearest",
                up_widths=(512, 512, 256, 128),
                norm="none",
            ),
            paper_out_channels=21,
        ),
        Preset(
            "cicek3d",
            3,
            "3D U-Net (Cicek et al. 2016): valid 3x3x3 convs + batch norm, 2x2x2 up-convs",
            (132, 132, 116),
            32,
            dict(
                widths=(64, 128, 256, 512),
                inner_widths=(32, 64, 128, 256),
                up_widths=(512, 256, 128),
                padding="valid",
                upsampling="transposed",
                norm="batch",
            ),
            paper_out_channels=3,
        ),
    )
}


def _unet_arguments() -> list[str]:
    params = inspect.signature(UNet.__init__).parameters
    return [p for p in params if p not in ("self", "spatial_dims", "in_channels", "out_channels")]


def preset_depth(preset: str) -> int:
    """Number of poolings (levels - 1) of a preset."""
    if preset not in PRESETS:
        raise ValueError(f"unknown U-Net preset {preset!r}; choose one of {sorted(PRESETS)}")
    return len(PRESETS[preset].kwargs["widths"]) - 1


def _truncate_depth(kwargs: dict[str, Any], depth: int, preset: str) -> dict[str, Any]:
    """The preset's arguments for its ``depth + 1`` shallowest levels: encoder lists keep their
    first entries, decoder lists (deepest first) their last ones, dropout only on kept levels."""
    full = len(kwargs["widths"]) - 1
    if not 1 <= depth <= full:
        raise ValueError(f"depth of preset {preset!r} must be 1..{full} (its poolings), got {depth}")
    out = dict(kwargs)
    for key in ("widths", "inner_widths", "convs_per_block"):
        if isinstance(out.get(key), (tuple, list)):
            out[key] = tuple(out[key][: depth + 1])
    for key in ("decoder_widths", "up_widths", "decoder_convs"):
        if isinstance(out.get(key), (tuple, list)):
            out[key] = tuple(out[key][-depth:])
    if out.get("dropout_levels") is not None:
        out["dropout_levels"] = tuple(level for level in out["dropout_levels"] if level <= depth)
    return out


def create_unet(
    preset: str,
    *,
    in_channels: int = 1,
    out_channels: int = 2,
    depth: int | None = None,
    norm: str | None = None,
    **overrides: Any,
) -> UNet:
    """Build a preset, e.g. ``create_unet("paper", base_width=8)``.

    ``base_width`` scales all widths of the preset by ``base_width / preset.base_width`` (the
    architecture is unchanged). ``depth`` (poolings; default the preset's) keeps the preset's
    ``depth + 1`` shallowest levels, as nnU-Net sizes its depth to the patch: a plan for a CPU
    uses it when the preset's deepest level makes even its smallest training step too slow.
    ``norm`` (default the preset's) replaces the normalisation layers, e.g. ``"instance"`` for
    the 3D U-Net's batch norm when a plan's batches are too small for batch statistics.
    Any other :class:`UNet` argument may be overridden too.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown U-Net preset {preset!r}; choose one of {sorted(PRESETS)}")
    spec = PRESETS[preset]
    allowed = ["base_width", "depth", *_unet_arguments()]  # norm is an argument of UNet too
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(f"unknown override(s) {unknown} for preset {preset!r}; valid keys: {allowed}")
    kwargs = dict(spec.kwargs)
    if depth is not None:
        kwargs = _truncate_depth(kwargs, int(depth), preset)
    if norm is not None:
        kwargs["norm"] = norm
    base_width = overrides.pop("base_width", None)
    if base_width is not None and int(base_width) != spec.base_width:
        base_width = int(base_width)
        if base_width < 1:
            raise ValueError(f"base_width must be >= 1, got {base_width}")
        for key in _WIDTH_KEYS:
            if key in kwargs:
                kwargs[key] = tuple(max(1, w * base_width // spec.base_width) for w in kwargs[key])
    kwargs.update(overrides)
    return UNet(spec.spatial_dims, in_channels, out_channels, **kwargs)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def count_conv_layers(module: nn.Module) -> int:
    """Convolution and transposed-convolution layers (the paper counts 23 for its U-Net)."""
    kinds = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    return sum(isinstance(m, kinds) for m in module.modules())


def preset_table(**overrides: Any) -> list[dict[str, Any]]:
    """One row per preset at its source document's input size and number of classes:
    ``name, spatial_dims, input_size, output_size, parameters, conv_layers, description``.

    Networks are built on the ``meta`` device, so no memory is allocated for their weights.
    """
    rows = []
    for spec in PRESETS.values():
        with torch.device("meta"):
            net = create_unet(spec.name, out_channels=spec.paper_out_channels, **overrides)
        rows.append(
            dict(
                name=spec.name,
                spatial_dims=spec.spatial_dims,
                input_size=list(spec.paper_input_size),
                output_size=list(net.output_size(spec.paper_input_size)),
                parameters=count_parameters(net),
                conv_layers=count_conv_layers(net),
                description=spec.description,
            )
        )
    return rows


def load_vgg16_features(net: UNet, state_dict_or_path: Mapping[str, torch.Tensor] | str | Path) -> UNet:
    """Load a torchvision VGG16 ``features`` state dict (e.g. ``vgg16-397923af.pth``, a local
    file the user already has; nothing is downloaded) into the encoder of a ``vgg16`` U-Net.

    The 13 convolutions of VGG16 map in order onto the 13 encoder convolutions. Keys may carry
    a ``features.`` prefix (a whole VGG16 state dict) or not (``vgg.features`` alone). For a
    one-channel input the RGB filters of the first convolution are summed, a common way to
    reuse ImageNet weights on gray-value scans.
    """
    if isinstance(state_dict_or_path, (str, Path)):
        state = torch.load(state_dict_or_path, map_location="cpu", weights_only=True)
    else:
        state = dict(state_dict_or_path)
    state = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
    vgg_indices = sorted({int(k.split(".")[0]) for k in state if k.endswith(".weight")})
    convs = [m for m in net.encoder.modules() if isinstance(m, nn.Conv2d)]
    if len(vgg_indices) != len(convs):
        raise ValueError(
            f"expected {len(convs)} VGG16 feature convolutions, found {len(vgg_indices)} in the state dict"
        )
    with torch.no_grad():
        for index, conv in zip(vgg_indices, convs):
            weight, bias = state[f"{index}.weight"], state[f"{index}.bias"]
            if conv is convs[0] and weight.shape[1] != conv.in_channels:
                if conv.in_channels != 1:
                    raise ValueError(
                        f"VGG16 first conv has {weight.shape[1]} input channels, the network "
                        f"{conv.in_channels}; only 3 or 1 are supported"
                    )
                weight = weight.sum(dim=1, keepdim=True)
            if weight.shape != conv.weight.shape:
                raise ValueError(
                    f"VGG16 features.{index}.weight has shape {tuple(weight.shape)}, the encoder "
                    f"expects {tuple(conv.weight.shape)} (a base_width override breaks the layout)"
                )
            conv.weight.copy_(weight)
            conv.bias.copy_(bias)
    return net
