"""The U-Net's building blocks, named after the arrows of Ronneberger et al. 2015, Fig. 1.

Every block is built through MONAI's layer factories (``Conv[Conv.CONV, spatial_dims]``), so
2D and 3D share one code path. Tensors are channels-first: (batch, channels, *spatial).
"""

from __future__ import annotations

from typing import List

import torch
from monai.networks.layers.factories import Conv, Norm, Pad, Pool
from torch import nn

__all__ = ["ConvNormAct", "DoubleConv", "Down", "UpConv", "center_crop", "CropAndConcat", "Up"]

NORMS = ("none", "batch", "instance")
UPSAMPLINGS = ("transposed", "upsample", "nearest")
PADDINGS = ("valid", "same")


class ConvNormAct(nn.Sequential):
    """One 3x3 (3x3x3) convolution, optional normalisation, ReLU (a blue arrow of Fig. 1).

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        padding: ``"valid"`` (unpadded: loses 2 voxels per axis) or ``"same"``.
        norm: ``"none"``, ``"batch"`` or ``"instance"`` (applied between conv and ReLU).
        kernel_size: convolution size per axis.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        padding: str = "valid",
        norm: str = "none",
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        pad = 0 if padding == "valid" else kernel_size // 2
        self.add_module(
            "conv", Conv[Conv.CONV, spatial_dims](in_channels, out_channels, kernel_size, padding=pad)
        )
        if norm == "batch":
            self.add_module("norm", Norm[Norm.BATCH, spatial_dims](out_channels))
        elif norm == "instance":
            self.add_module("norm", Norm[Norm.INSTANCE, spatial_dims](out_channels, affine=True))
        self.add_module("act", nn.ReLU(inplace=True))


class DoubleConv(nn.Sequential):
    """The convolutions of one U-Net level ("two 3x3 convolutions, each followed by a ReLU").

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        widths: output channels of each convolution, in order (``(64, 64)`` in the paper,
            ``(32, 64)`` in the 3D U-Net whose channels double inside the block,
            three entries for the deeper VGG16 blocks).
        padding: ``"valid"`` or ``"same"``.
        norm: ``"none"``, ``"batch"`` or ``"instance"``.
        dropout: dropout probability applied after the last convolution (0 = none).
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        widths: List[int],
        padding: str = "valid",
        norm: str = "none",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels = in_channels
        for i, width in enumerate(widths):
            self.add_module(f"conv{i}", ConvNormAct(spatial_dims, channels, width, padding, norm))
            channels = width
        if dropout > 0:
            # element-wise, as Keras' Dropout and the paper's Caffe layers (not channel dropout)
            self.add_module("dropout", nn.Dropout(dropout))
        self.out_channels = channels


class Down(nn.Sequential):
    """2x2 max pooling with stride 2 (a red arrow), then the level's convolutions."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        widths: List[int],
        padding: str = "valid",
        norm: str = "none",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.add_module("pool", Pool[Pool.MAX, spatial_dims](kernel_size=2, stride=2))
        block = DoubleConv(spatial_dims, in_channels, widths, padding, norm, dropout)
        self.add_module("convs", block)
        self.out_channels = block.out_channels


class UpConv(nn.Module):
    """The "up-convolution" (a green arrow): doubles every spatial size.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels (the paper halves them; the 3D U-Net keeps them).
        mode: ``"transposed"``: 2x2 transposed convolution with stride 2 (the paper);
            ``"upsample"``: nearest-neighbour up-sampling then a 2x2 convolution padded as
            Keras' ``padding='same'`` (one voxel after), as in the Keras seed;
            ``"nearest"``: nearest-neighbour up-sampling only, as in the VGG16 seed
            (``out_channels`` must equal ``in_channels``).
        activation: ReLU after the convolution (the original Caffe model and the Keras port
            both have one).
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, mode: str, activation: bool = True
    ) -> None:
        super().__init__()
        if mode not in UPSAMPLINGS:
            raise ValueError(f"upsampling must be one of {UPSAMPLINGS}, got {mode!r}")
        layers: list[nn.Module] = []
        if mode == "transposed":
            layers.append(Conv[Conv.CONVTRANS, spatial_dims](in_channels, out_channels, 2, stride=2))
        else:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
            if mode == "upsample":
                # Keras' padding='same' for an even kernel pads one voxel after, none before
                layers.append(Pad[Pad.CONSTANTPAD, spatial_dims]((0, 1) * spatial_dims, 0.0))
                layers.append(Conv[Conv.CONV, spatial_dims](in_channels, out_channels, 2))
            elif out_channels != in_channels:
                raise ValueError(
                    f"'nearest' up-sampling keeps the channels: in {in_channels} != out {out_channels}"
                )
        if activation and mode != "nearest":
            layers.append(nn.ReLU(inplace=True))
        self.up = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


def center_crop(x: torch.Tensor, size: List[int]) -> torch.Tensor:
    """Crop the spatial axes of ``x`` (batch, channels, *spatial) to ``size`` (voxels), keeping
    the centre: the first ``(have - size) // 2`` voxels of each axis are dropped.

    The project's one centre crop (the skips, the losses' label/weight patches, the overlay
    pictures). Written here instead of MONAI's ``CenterSpatialCrop`` because it runs inside
    ``forward`` and must compile with TorchScript, takes the batch axis, and returns a view.
    """
    for d in range(len(size)):
        start = (x.shape[d + 2] - size[d]) // 2
        x = x.narrow(d + 2, start, size[d])
    return x


class CropAndConcat(nn.Module):
    """The grey arrow: centre-crop the encoder's feature map to the decoder's size, then
    concatenate along channels (skip first, as in the paper's figure and the seeds)."""

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # the sizes stay symbolic under torch.export (int() would freeze them to the example's)
        size: List[int] = list(x.shape[2:])
        return torch.cat([center_crop(skip, size), x], dim=1)


class Up(nn.Module):
    """One decoder level: up-convolution, crop-and-concat with the skip, convolutions."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        up_channels: int,
        widths: List[int],
        upsampling: str = "transposed",
        padding: str = "valid",
        norm: str = "none",
    ) -> None:
        super().__init__()
        self.upconv = UpConv(spatial_dims, in_channels, up_channels, upsampling)
        self.concat = CropAndConcat()
        self.convs = DoubleConv(spatial_dims, skip_channels + up_channels, widths, padding, norm)
        self.out_channels = self.convs.out_channels

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(self.concat(skip, self.upconv(x)))
