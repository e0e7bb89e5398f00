"""Reorientation to a canonical axis order (``"RAS"`` in 3D, ``"RA"`` in 2D) that inverts quietly
for 2D images.

Why not MONAI's ``Orientationd`` as it is (MONAI 1.6): its ``inverse`` derives the original axis
codes from the stored 4x4 affine, which always gives three codes, and so warns "axcodes ('LPS')
length is smaller than number of input spatial dimensions D=2" for every 2D image whose label map
is inverted; and leaving ``labels`` at its default raises a FutureWarning about the default's
change. :class:`SpatialOrientationd` passes the RAS labels explicitly (what the default means
for the RAS affines :class:`~unet_med.data.loading.ScanReader` gives) and inverts with as many
codes as the image has spatial axes; the result is the same array.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import nibabel as nib
import torch
from monai.transforms import Orientation, Orientationd
from monai.utils import TraceKeys

__all__ = ["RAS_LABELS", "SpatialOrientation", "SpatialOrientationd"]

# (start, end) labels of the three world axes of a RAS affine: left->right, posterior->anterior,
# inferior->superior (nibabel's default, MONAI's old default)
RAS_LABELS: tuple[tuple[str, str], ...] = (("L", "R"), ("P", "A"), ("I", "S"))


class SpatialOrientation(Orientation):
    """MONAI's ``Orientation`` (labels default :data:`RAS_LABELS`) whose inverse names only as many
    axis codes as the image has spatial axes (channel-first input)."""

    def __init__(
        self,
        axcodes: str,
        labels: Sequence[tuple[str, str]] = RAS_LABELS,
        lazy: bool = False,
    ) -> None:
        super().__init__(axcodes=axcodes, as_closest_canonical=False, labels=labels, lazy=lazy)

    def inverse(self, data: torch.Tensor) -> torch.Tensor:
        transform = self.pop_transform(data)
        original_affine = transform[TraceKeys.EXTRA_INFO]["original_affine"]
        axcodes = nib.orientations.aff2axcodes(original_affine, labels=self.labels)[: data.ndim - 1]
        back = Orientation(axcodes="".join(axcodes), as_closest_canonical=False, labels=self.labels)
        with back.trace_transform(False):
            return back(data)


class SpatialOrientationd(Orientationd):
    """Dictionary version of :class:`SpatialOrientation`.

    Args:
        keys: keys of the channel-first images to reorient.
        axcodes: target codes, one per spatial axis (``"RAS"``, ``"RA"`` for 2D).
        labels: axis labels of the affine's world axes (default RAS).
        allow_missing_keys: skip keys that are absent.
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable],
        axcodes: str,
        labels: Sequence[tuple[str, str]] = RAS_LABELS,
        allow_missing_keys: bool = False,
        lazy: bool = False,
    ) -> None:
        super().__init__(
            keys, axcodes=axcodes, labels=labels, allow_missing_keys=allow_missing_keys, lazy=lazy
        )
        self.ornt_transform = SpatialOrientation(axcodes=axcodes, labels=labels, lazy=lazy)
