"""Intensity normalisation and foreground selection: the CT window and the dataset's CT scheme,
the body-foreground z-score, the Otsu body mask, and the ``CropForegroundd`` selectors.

CT intensities are in Hounsfield units (HU); data are channel-first. The normalisation modes of
:func:`~unet_med.transforms.chains.preprocessing_transforms` (``intensity=``, :data:`INTENSITY_MODES`):

- ``"ct"``: the fixed CT window ``window`` (HU) scaled to [0, 1] (the paper bundle's setting);
- ``"ct_dataset"``: nnU-Net's CT scheme: clip to the dataset's foreground 0.5/99.5 percentiles
  ``intensity_clip`` and z-score with the dataset's foreground ``intensity_mean``/``intensity_std``
  (all from a plan's fingerprint), the same numbers for every scan
  (:func:`dataset_ct_normalisation`);
- ``"zscore_foreground"``: per scan and channel, z-score whose mean/std come from the body
  foreground (:func:`body_foreground_mask`, Otsu), so the result does not depend on how much
  air or background the field of view holds (:class:`ForegroundNormalizeIntensityd`);
- ``"mr"``: per-scan z-score over non-zero voxels (kept as it was; scanner noise makes air
  non-zero, so prefer ``"zscore_foreground"``);
- ``"none"``.

The selectors (:class:`ForegroundAbove`, :class:`BodyForeground`) are picklable classes (worker
processes and cached datasets copy them) with a readable, stable ``repr`` (it shows in logs and the
executed config).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, NormalizeIntensity, ScaleIntensityRanged
from scipy import ndimage

__all__ = [
    "INTENSITY_MODES",
    "BodyForeground",
    "ForegroundAbove",
    "ForegroundNormalizeIntensityd",
    "body_foreground_mask",
    "dataset_ct_normalisation",
]

INTENSITY_MODES = ("ct", "ct_dataset", "zscore_foreground", "mr", "none")
# Voxels Otsu's threshold is computed from (an even subsample of larger scans: same threshold
# to within the histogram's bin width, a fraction of the cost).
_OTSU_MAX_VOXELS = 1_000_000
# Connected pieces of a body mask smaller than this fraction of the largest are noise specks.
_SPECK_FRACTION = 0.05


def body_foreground_mask(channel: Any, *, fill_holes: bool = True) -> np.ndarray:
    """Boolean mask of the body (or organ, or cells) in one spatial channel: voxels above Otsu's
    threshold, without specks of noise, with cavities enclosed by the body filled.

    Otsu's threshold splits the intensity histogram into the dark background (air, outside the
    field of view, scanner noise around 0 in MR) and the bright object, wherever that background
    lies: unlike ``image != 0`` it does not count noisy air as body, and unlike a fixed threshold
    it needs no unit (HU, arbitrary MR values). When air dominates the field of view the
    threshold can fall into the tail of the air's noise, so connected pieces smaller than 5% of
    the largest are dropped (noise specks; objects such as cells of similar sizes all stay). For
    scans larger than 1e6 voxels the threshold is computed from an even subsample. A constant
    channel is all foreground.

    Args:
        channel: spatial array (no channel axis), numpy or torch.
        fill_holes: fill cavities that the mask encloses (``scipy.ndimage.binary_fill_holes``).
    """
    from skimage.filters import threshold_otsu

    arr = np.asarray(channel.detach().cpu() if isinstance(channel, torch.Tensor) else channel)
    arr = arr.astype(np.float32, copy=False)
    flat = arr.ravel()
    finite = flat[np.isfinite(flat)]
    if finite.size == 0 or finite.min() == finite.max():
        return np.ones(arr.shape, bool)
    step = max(1, finite.size // _OTSU_MAX_VOXELS)
    threshold = threshold_otsu(finite[::step])
    mask = arr > threshold
    pieces, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(pieces.ravel())
        sizes[0] = 0
        mask = (sizes >= _SPECK_FRACTION * sizes.max())[pieces]
    if fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    return mask


class BodyForeground:
    """``CropForegroundd`` selector: the :func:`body_foreground_mask` of every channel (picklable)."""

    def __call__(self, x: Any) -> Any:
        masks = np.stack([body_foreground_mask(c) for c in x])
        # a plain boolean tensor, as ``x > threshold`` gives: MONAI's bounding box reads its maxima
        return torch.as_tensor(masks, device=x.device) if isinstance(x, torch.Tensor) else masks

    def __repr__(self) -> str:  # stable and readable in logs
        return "BodyForeground()"


class ForegroundNormalizeIntensityd(MapTransform):
    """Per-scan, per-channel z-score whose mean and standard deviation are taken over the body
    foreground (:func:`body_foreground_mask`), applied to every voxel of the scan.

    The statistics come from the body alone, so the same body gives the same normalised values
    whether the field of view holds little or much background (a whole-volume z-score shifts
    with the amount of air; ``image != 0`` counts scanner noise in air as body).

    Why our own: MONAI's ``NormalizeIntensity`` computes its statistics over the whole image or
    its non-zero voxels and takes no mask; this transform computes the masked statistics and
    hands them to ``NormalizeIntensity`` (``subtrahend``/``divisor``, channel-wise) to apply.

    Args:
        keys: image keys (channel-first).
        fill_holes: as :func:`body_foreground_mask`.
        eps: lower bound of the divisor (a constant body gives 0 after normalisation, not NaN).
    """

    def __init__(
        self,
        keys: KeysCollection,
        *,
        fill_holes: bool = True,
        eps: float = 1e-8,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.fill_holes, self.eps = fill_holes, eps

    def statistics(self, image: Any) -> tuple[list[float], list[float]]:
        """Per-channel (means, standard deviations) over the body foreground of ``image``."""
        means, stds = [], []
        for channel in image:
            values = np.asarray(channel.detach().cpu() if isinstance(channel, torch.Tensor) else channel)
            body = values[body_foreground_mask(values, fill_holes=self.fill_holes)].astype(np.float64)
            means.append(float(body.mean()))
            stds.append(max(float(body.std()), self.eps))
        return means, stds

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            means, stds = self.statistics(d[key])
            d[key] = NormalizeIntensity(subtrahend=means, divisor=stds, channel_wise=True)(d[key])
        return d


def dataset_ct_normalisation(
    image_key: str,
    intensity_clip: Sequence[float] | None,
    intensity_mean: float | None,
    intensity_std: float | None,
) -> ScaleIntensityRanged:
    """nnU-Net's CT normalisation as one MONAI transform: clipping to ``[lo, hi]`` (HU) and the
    z-score ``(x - mean) / std`` are one linear map of ``[lo, hi]`` onto
    ``[(lo - mean) / std, (hi - mean) / std]`` with clipping."""
    missing = [
        name
        for name, value in (
            ("intensity_clip", intensity_clip),
            ("intensity_mean", intensity_mean),
            ("intensity_std", intensity_std),
        )
        if value is None
    ]
    if missing:
        raise ValueError(
            f"intensity='ct_dataset' needs the dataset's foreground statistics; missing {missing} "
            "(a plan from `unet-med plan` sets them)"
        )
    clip = [float(v) for v in intensity_clip]  # type: ignore[union-attr]
    if len(clip) != 2 or not clip[0] < clip[1]:
        raise ValueError(f"intensity_clip must be [low, high] with low < high, got {list(intensity_clip)}")
    mean, std = float(intensity_mean), float(intensity_std)  # type: ignore[arg-type]
    if not std > 0:
        raise ValueError(f"intensity_std must be > 0, got {intensity_std}")
    lo, hi = clip
    return ScaleIntensityRanged(
        image_key, a_min=lo, a_max=hi, b_min=(lo - mean) / std, b_max=(hi - mean) / std, clip=True
    )


class ForegroundAbove:
    """``CropForegroundd`` selector: voxels above ``threshold`` (picklable, unlike a lambda)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def __call__(self, x: Any) -> Any:
        return x > self.threshold

    def __repr__(self) -> str:  # stable and readable in logs
        return f"ForegroundAbove({self.threshold})"
