"""Feature-map size arithmetic for U-Nets with valid ("unpadded") or same convolutions.

All sizes are in voxels (pixels in 2D), one integer per spatial axis, channels excluded.
Axes are independent, so anisotropic sizes (e.g. 132x132x116) are handled axis by axis.

For a valid network every 3x3 convolution loses 2 voxels per axis and every 2x2 max pooling
halves the size, which must be even (the paper: "a tile size is legal only if every max pool
sees an even size"). The output of a valid U-Net is then ``input - margin_total`` for a constant
``margin_total`` per network, so the input tile carries ``margin_total / 2`` voxels of context
on each side of the output tile (the overlap-tile strategy).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "UNetShapeSpec",
    "valid_output_size",
    "is_legal_size",
    "min_input_size",
    "nearest_legal_sizes",
    "context_margin",
    "check_input_size",
    "input_patch_size",
]


@dataclass(frozen=True)
class UNetShapeSpec:
    """What the size arithmetic needs to know about a U-Net.

    Args:
        encoder_convs: number of 3x3 convolutions in each encoder level, the last entry
            being the bottleneck; ``len(encoder_convs) - 1`` poolings.
        decoder_convs: number of 3x3 convolutions in each decoder level, deepest first.
        head_convs: extra 3x3 convolutions before the final 1x1 (the Keras seed has one).
        padding: ``"valid"`` (unpadded, each conv loses 2 voxels) or ``"same"``.
    """

    encoder_convs: tuple[int, ...]
    decoder_convs: tuple[int, ...]
    head_convs: int = 0
    padding: str = "valid"

    def __post_init__(self) -> None:
        if self.padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {self.padding!r}")
        if len(self.decoder_convs) != len(self.encoder_convs) - 1:
            raise ValueError(
                f"decoder_convs needs {len(self.encoder_convs) - 1} entries (one per pooling), "
                f"got {len(self.decoder_convs)}"
            )

    @property
    def poolings(self) -> int:
        return len(self.encoder_convs) - 1

    @property
    def conv_loss(self) -> int:
        """Voxels lost per axis by one 3x3 convolution."""
        return 2 if self.padding == "valid" else 0


def _axis_output(size: int, spec: UNetShapeSpec) -> int | None:
    """Output size along one axis, or None when the size is illegal for the network."""
    loss = spec.conv_loss
    s = size
    for convs in spec.encoder_convs[:-1]:
        s -= loss * convs
        if s <= 0 or s % 2:
            return None
        s //= 2
    s -= loss * spec.encoder_convs[-1]
    if s <= 0:
        return None
    for convs in spec.decoder_convs:
        s = 2 * s - loss * convs
        if s <= 0:
            return None
    s -= loss * spec.head_convs
    return s if s > 0 else None


def _as_sizes(size: int | Sequence[int], spatial_dims: int | None = None) -> tuple[int, ...]:
    if isinstance(size, int):
        return (size,) * (spatial_dims or 1)
    sizes = tuple(int(s) for s in size)
    if spatial_dims is not None and len(sizes) != spatial_dims:
        raise ValueError(f"expected {spatial_dims} spatial sizes, got {len(sizes)}: {sizes}")
    return sizes


def is_legal_size(size: int | Sequence[int], spec: UNetShapeSpec) -> bool:
    """True when every pooling sees an even size and no feature map shrinks to <= 0."""
    return all(_axis_output(s, spec) is not None for s in _as_sizes(size))


def _nearest_axis(size: int, spec: UNetShapeSpec) -> tuple[int | None, int]:
    below = next((s for s in range(size, 0, -1) if _axis_output(s, spec) is not None), None)
    above = next(s for s in range(max(size, 1), size + 10_000) if _axis_output(s, spec) is not None)
    return below, above


def nearest_legal_sizes(
    size: int | Sequence[int], spec: UNetShapeSpec
) -> tuple[tuple[int | None, ...], tuple[int, ...]]:
    """The largest legal size <= ``size`` and the smallest legal size >= ``size``, per axis.

    An axis below the smallest legal size has ``None`` as its size below.
    """
    pairs = [_nearest_axis(s, spec) for s in _as_sizes(size)]
    return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)


def check_input_size(size: Sequence[int], spec: UNetShapeSpec) -> None:
    """Raise ``ValueError`` naming the illegal axes and the nearest legal sizes around them."""
    sizes = _as_sizes(size)
    bad = [i for i, s in enumerate(sizes) if _axis_output(s, spec) is None]
    if not bad:
        return
    below, above = nearest_legal_sizes(sizes, spec)
    details = "; ".join(
        f"axis {i}: {sizes[i]} is illegal, nearest legal sizes {below[i]} (below) and {above[i]} (above)"
        for i in bad
    )
    raise ValueError(
        f"input size {tuple(sizes)} is not legal for this {spec.padding}-padding U-Net with "
        f"{spec.poolings} poolings (every max pool must see an even size and no feature map may "
        f"shrink to <= 0): {details}"
    )


def valid_output_size(size: int | Sequence[int], spec: UNetShapeSpec) -> tuple[int, ...]:
    """Output size per axis for an input of ``size``; ``ValueError`` if the size is illegal."""
    sizes = _as_sizes(size)
    check_input_size(sizes, spec)
    return tuple(_axis_output(s, spec) for s in sizes)  # type: ignore[misc]


def min_input_size(output_size: int | Sequence[int], spec: UNetShapeSpec) -> tuple[int, ...]:
    """The smallest legal input size whose output is at least ``output_size``, per axis."""
    result = []
    for want in _as_sizes(output_size):
        s = max(want, 1)
        while True:
            out = _axis_output(s, spec)
            if out is not None and out >= want:
                break
            s += 1
        result.append(s)
    return tuple(result)


def context_margin(spec: UNetShapeSpec, size: int | Sequence[int] | None = None) -> tuple[int, ...]:
    """Context voxels that the network consumes on *each* side of its output, per axis.

    For valid networks this is the same for every legal size, (input - output) / 2; for
    same-padding networks it is 0. ``size`` (a legal input size) picks the axes; by default
    the smallest legal size of one axis is used.
    """
    sizes = _as_sizes(size) if size is not None else min_input_size(1, spec)
    outs = valid_output_size(sizes, spec)
    margins = []
    for s, o in zip(sizes, outs):
        if (s - o) % 2:
            raise ValueError(f"input {s} -> output {o} is not centred (odd difference)")
        margins.append((s - o) // 2)
    return tuple(margins)


def input_patch_size(network: nn.Module, patch_size: int | Sequence[int]) -> tuple[int, ...]:
    """The network input size (voxels) whose output is exactly ``patch_size`` (the bundles'
    ``patch_size`` is the network *output* size; a valid U-Net reads a larger tile).

    ``network`` is a :class:`~unet_med.networks.UNet` (its ``spatial_dims`` and ``spec``); a
    network without a ``spec`` reads the tile it writes. Raises ``ValueError`` naming the nearest
    legal output sizes when no input gives exactly ``patch_size`` (a valid U-Net's outputs are
    spaced by its pooling period, e.g. 16 voxels for the paper's 4 poolings).
    """
    dims = int(getattr(network, "spatial_dims", 2))
    sizes = (int(patch_size),) * dims if isinstance(patch_size, int) else tuple(int(s) for s in patch_size)
    if len(sizes) != dims:
        raise ValueError(f"patch_size needs {dims} sizes for a {dims}D network, got {list(sizes)}")
    spec = getattr(network, "spec", None)
    if spec is None:
        return sizes
    inputs = min_input_size(sizes, spec)
    outputs = valid_output_size(inputs, spec)
    if outputs == sizes:
        return inputs
    period = 2**spec.poolings
    bad = [i for i, (o, s) in enumerate(zip(outputs, sizes, strict=True)) if o != s]
    details = "; ".join(
        f"axis {i}: {sizes[i]} is not a legal output size, nearest legal "
        f"{_legal_output_below(sizes[i], spec)} (below) and {outputs[i]} (above)"
        for i in bad
    )
    raise ValueError(
        f"patch_size {list(sizes)} (the network output size) is illegal for this {spec.padding}-padding "
        f"U-Net, whose output sizes are spaced by {period} voxels: {details}"
    )


def _legal_output_below(size: int, spec: UNetShapeSpec) -> int | None:
    """The largest output size (one axis) of a legal input that is <= ``size``; None if none is."""
    best = None
    for s in range(1, size + 400):
        out = _axis_output(s, spec)
        if out is None:
            continue
        if out > size:
            break
        best = out
    return best
