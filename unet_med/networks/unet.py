"""One generic U-Net for 2D and 3D: encoder levels that return their skips, a decoder that
consumes them, a 1x1 convolution to the classes. Returns logits; the activation belongs to the
loss or the post-processing."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, List

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from unet_med.networks.blocks import NORMS, PADDINGS, UPSAMPLINGS, DoubleConv, Down, Up
from unet_med.networks.shapes import UNetShapeSpec, check_input_size, context_margin, valid_output_size

__all__ = ["UNet", "he_normal_"]


def _per_level(value: int | Sequence[int], levels: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * levels
    values = [int(v) for v in value]
    if len(values) != levels:
        raise ValueError(f"{name} needs {levels} entries (one per level), got {len(values)}: {values}")
    return values


def he_normal_(module: nn.Module) -> None:
    """Initialise every convolution as the paper does: Gaussian, std sqrt(2 / N), N = fan-in.

    N counts the inputs of one output neuron: ``in_channels * prod(kernel)`` for a convolution
    (9 x 64 = 576 for a 3x3 conv over 64 channels); for a transposed convolution whose stride
    equals its kernel (the 2x2 up-convolution) every output voxel sees one input voxel per
    channel, so N = in_channels. Biases start at zero, normalisation layers at identity.
    """
    for m in module.modules():
        if isinstance(m, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
            overlap = math.prod(-(-k // s) for k, s in zip(m.kernel_size, m.stride))
            fan_in = m.in_channels // m.groups * overlap
        elif isinstance(m, (nn.Conv2d, nn.Conv3d)):
            fan_in = m.in_channels // m.groups * math.prod(m.kernel_size)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d, nn.InstanceNorm3d)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            continue
        else:
            continue
        nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan_in))
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with the knobs that the paper, the Keras port, the
    VGG16-encoder U-Net and the 3D U-Net (Cicek et al. 2016) need.

    Args:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes (logits, no activation).
        widths: output channels of each encoder level, shallowest first; the last level is the
            bottleneck. ``len(widths) - 1`` poolings.
        convs_per_block: 3x3 convolutions per encoder level, one int or one per level.
        inner_widths: width of the convolutions before the last one in each encoder level
            (the 3D U-Net doubles channels inside the block: 32 -> 64). Default: ``widths``.
        decoder_widths: output channels of each decoder level, deepest first.
            Default: ``widths[:-1]`` reversed.
        up_widths: output channels of each up-convolution, deepest first. Default:
            ``decoder_widths`` (the paper halves the channels); the 3D U-Net keeps them.
        decoder_convs: 3x3 convolutions per decoder level, one int or one per level.
        head_widths: extra 3x3 convolutions before the final 1x1 (the Keras seed: ``(2,)``).
        padding: ``"valid"`` (unpadded, the paper) or ``"same"``.
        upsampling: ``"transposed"`` (2x2 up-convolution), ``"upsample"`` (nearest + 2x2 conv,
            Keras seed) or ``"nearest"`` (nearest only, VGG16 seed).
        norm: ``"none"``, ``"batch"`` or ``"instance"``.
        dropout: dropout probability at the end of the chosen encoder levels.
        dropout_levels: encoder levels (0-based) followed by dropout; default the bottleneck.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        out_channels: int = 2,
        widths: Sequence[int] = (64, 128, 256, 512, 1024),
        convs_per_block: int | Sequence[int] = 2,
        inner_widths: Sequence[int] | None = None,
        decoder_widths: Sequence[int] | None = None,
        up_widths: Sequence[int] | None = None,
        decoder_convs: int | Sequence[int] = 2,
        head_widths: Sequence[int] = (),
        padding: str = "valid",
        upsampling: str = "transposed",
        norm: str = "none",
        dropout: float = 0.0,
        dropout_levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        for name, value, choices in (
            ("padding", padding, PADDINGS),
            ("upsampling", upsampling, UPSAMPLINGS),
            ("norm", norm, NORMS),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        widths = [int(w) for w in widths]
        levels = len(widths)
        if levels < 2:
            raise ValueError(f"a U-Net needs at least 2 levels (widths), got {widths}")
        n_convs = _per_level(convs_per_block, levels, "convs_per_block")
        inner = list(inner_widths) if inner_widths is not None else widths
        inner = _per_level(inner, levels, "inner_widths")
        dec_widths = _per_level(
            list(decoder_widths) if decoder_widths is not None else widths[-2::-1],
            levels - 1,
            "decoder_widths",
        )
        ups = _per_level(list(up_widths) if up_widths is not None else dec_widths, levels - 1, "up_widths")
        dec_convs = _per_level(decoder_convs, levels - 1, "decoder_convs")
        drop_at = set(dropout_levels) if dropout_levels is not None else {levels - 1}

        # The constructor arguments as plain JSON data, so a checkpoint can name its architecture
        # (``UNet(**net.config)`` rebuilds the same network).
        self.config: dict[str, Any] = {
            "spatial_dims": spatial_dims,
            "in_channels": in_channels,
            "out_channels": out_channels,
            "widths": widths,
            "convs_per_block": n_convs,
            "inner_widths": inner,
            "decoder_widths": dec_widths,
            "up_widths": ups,
            "decoder_convs": dec_convs,
            "head_widths": [int(w) for w in head_widths],
            "padding": padding,
            "upsampling": upsampling,
            "norm": norm,
            "dropout": float(dropout),
            "dropout_levels": sorted(drop_at),
        }
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.padding = padding
        self.spec = UNetShapeSpec(
            encoder_convs=tuple(n_convs),
            decoder_convs=tuple(dec_convs),
            head_convs=len(head_widths),
            padding=padding,
        )

        self.encoder = nn.ModuleList()
        channels = in_channels
        for level in range(levels):
            block_widths = [inner[level]] * (n_convs[level] - 1) + [widths[level]]
            p = dropout if level in drop_at else 0.0
            block: nn.Module
            if level == 0:
                block = DoubleConv(spatial_dims, channels, block_widths, padding, norm, p)
            else:
                block = Down(spatial_dims, channels, block_widths, padding, norm, p)
            self.encoder.append(block)
            channels = block.out_channels

        self.decoder = nn.ModuleList()
        for i in range(levels - 1):
            skip_channels = widths[levels - 2 - i]
            up = Up(
                spatial_dims,
                channels,
                skip_channels,
                ups[i],
                [dec_widths[i]] * dec_convs[i],
                upsampling,
                padding,
                norm,
            )
            self.decoder.append(up)
            channels = up.out_channels

        head: list[nn.Module] = []
        if head_widths:
            head.append(DoubleConv(spatial_dims, channels, [int(w) for w in head_widths], padding, norm))
            channels = int(head_widths[-1])
        head.append(Conv[Conv.CONV, spatial_dims](channels, out_channels, kernel_size=1))
        self.head = nn.Sequential(*head)
        he_normal_(self)

    def output_size(self, input_size: Sequence[int]) -> tuple[int, ...]:
        """Spatial output size (voxels) for a spatial input size; ``ValueError`` if illegal."""
        return valid_output_size(input_size, self.spec)

    def margin(self) -> tuple[int, ...]:
        """Context voxels consumed on each side of the output, per spatial axis."""
        return context_margin(self.spec) * self.spatial_dims

    @torch.jit.unused
    def _check_size(self, size: List[int]) -> None:
        check_input_size(size, self.spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and not torch.compiler.is_compiling():
            self._check_size([int(s) for s in x.shape[2:]])
        skips: List[torch.Tensor] = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        skips.pop()  # the bottleneck feeds the decoder directly
        for i, up in enumerate(self.decoder):
            x = up(x, skips[len(skips) - 1 - i])
        return self.head(x)
