"""The MONAI ``Compose`` chains a bundle builds: preprocessing, training (valid-convolution patch
pairs, the paper's augmentations and border weight map), inference (invertible) and the inversion
of predictions -- one function per purpose.

Every chain is a ``monai.transforms.Compose`` built from plain arguments, so a bundle's JSON can
create it with ``{"_target_": "unet_med.transforms.training_transforms", ...}``. One code path
serves 2D (channel-first ``(C, H, W)``) and 3D (``(C, H, W, D)``) data.

Sizes are in voxels, spacings in mm, CT intensities in Hounsfield units (HU); the intensity
normalisation modes are described in :mod:`unet_med.transforms.intensity`.

Valid-convolution patch pairs: a U-Net with unpadded convolutions maps an input tile of size
``in`` to a centred output tile of size ``out = in - 2 * margin``. Training therefore samples the
image patch at the network's legal *input* size and crops label and weight map to the matching
*output* size around the same centre, so a label voxel and the image voxel under it are the same
world point. Before sampling, every key is mirrored by ``margin`` voxels at the borders (the
paper's extrapolation by mirroring), so border voxels of the scan can be in the output too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    BorderPadd,
    CenterSpatialCropd,
    Compose,
    CropForegroundd,
    EnsureTyped,
    Invertd,
    LoadImaged,
    NormalizeIntensityd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    SpatialPadd,
)

from unet_med.data.loading import ScanReader
from unet_med.transforms.elastic import RandCoarseElasticd
from unet_med.transforms.intensity import (
    INTENSITY_MODES,
    BodyForeground,
    ForegroundAbove,
    ForegroundNormalizeIntensityd,
    dataset_ct_normalisation,
)
from unet_med.transforms.orientation import SpatialOrientationd
from unet_med.transforms.resampling import AxisAlignedSpacingd
from unet_med.transforms.weight_map import BorderWeightMapd

__all__ = [
    "valid_patch_margin",
    "preprocessing_transforms",
    "training_transforms",
    "inference_transforms",
    "prediction_inversion_transforms",
]

# Resampling orders as MONAI ``Spacingd`` modes: 0 and 1 run on torch ("nearest", "bilinear");
# higher spline orders (e.g. 3, nnU-Net's image order) run on scipy.
_RESAMPLE_MODES: dict[int, str] = {0: "nearest", 1: "bilinear"}


def _resample_mode(order: int, name: str) -> str | int:
    if order not in range(6):
        raise ValueError(f"{name} must be a spline order 0..5 (0 nearest, 1 linear), got {order!r}")
    return _RESAMPLE_MODES.get(int(order), int(order))


def valid_patch_margin(input_patch_size: Sequence[int], output_patch_size: Sequence[int]) -> tuple[int, ...]:
    """Context voxels per side, ``(input - output) / 2`` per axis; ``ValueError`` if not centred."""
    inp, out = tuple(int(s) for s in input_patch_size), tuple(int(s) for s in output_patch_size)
    if len(inp) != len(out):
        raise ValueError(f"input patch {inp} and output patch {out} have different dimensions")
    bad = [i for i, (a, b) in enumerate(zip(inp, out)) if a < b or (a - b) % 2]
    if bad:
        raise ValueError(
            f"output patch {out} cannot be centred in input patch {inp} (axis {bad[0]}: the difference "
            "must be even and >= 0; take the sizes from the network's shape arithmetic)"
        )
    return tuple((a - b) // 2 for a, b in zip(inp, out))


def preprocessing_transforms(
    keys: Sequence[str] = ("image", "label"),
    *,
    image_key: str = "image",
    label_key: str = "label",
    load: bool = True,
    spatial_dims: int = 3,
    axcodes: str | None = "RAS",
    spacing: Sequence[float] | None = None,
    intensity: str = "ct",
    window: Sequence[float] = (-1000.0, 1000.0),
    intensity_clip: Sequence[float] | None = None,
    intensity_mean: float | None = None,
    intensity_std: float | None = None,
    resample_order_image: int = 1,
    resample_order_label: int = 0,
    crop_foreground: bool = False,
    foreground_threshold: float | None = None,
    foreground_margin: int = 0,
    allow_missing_keys: bool = True,
) -> Compose:
    """Load (optional), orient, resample, crop to foreground and normalise intensities.

    Args:
        keys: image and label keys (labels are interpolated with nearest neighbour).
        load: start with ``LoadImaged`` (:class:`~unet_med.data.loading.ScanReader`), channel first.
        spatial_dims: 2 or 3; ``axcodes`` is cut to this many letters (``"RAS"`` -> ``"RA"``).
        axcodes: canonical orientation, or None to keep the stored one.
        spacing: target voxel spacing in mm per axis, or None to keep it.
        resample_order_image, resample_order_label: spline order of the resampling to
            ``spacing`` (0 nearest, 1 linear, as MONAI's torch modes; 2..5 run on scipy); labels
            must stay 0 to keep class values.
        intensity: ``"ct"`` (clip ``window`` HU and scale to [0, 1]), ``"ct_dataset"`` (clip to
            ``intensity_clip`` and z-score with ``intensity_mean``/``intensity_std``, the
            dataset's foreground statistics), ``"zscore_foreground"`` (per-scan z-score over the
            body foreground, :class:`ForegroundNormalizeIntensityd`), ``"mr"`` (per-scan z-score
            over non-zero voxels) or ``"none"``.
        intensity_clip, intensity_mean, intensity_std: the ``"ct_dataset"`` numbers (HU), e.g.
            from a plan; ignored by the other modes.
        crop_foreground: crop all keys to the bounding box of the image's foreground plus
            ``foreground_margin`` voxels: voxels above ``foreground_threshold`` when given, else
            above -500 HU for ``"ct"``/``"ct_dataset"``, the Otsu body mask
            (:class:`BodyForeground`) for ``"zscore_foreground"`` and above 0 otherwise.
        allow_missing_keys: unlabelled items (no label key) pass through.

    Orientation, spacing and the foreground crop are invertible with ``Invertd``.
    """
    if intensity not in INTENSITY_MODES:
        raise ValueError(f"intensity must be one of {INTENSITY_MODES}, got {intensity!r}")
    image_mode = _resample_mode(resample_order_image, "resample_order_image")
    label_mode = _resample_mode(resample_order_label, "resample_order_label")
    keys = list(keys)
    nearest_or_linear = [label_mode if k != image_key else image_mode for k in keys]
    steps: list[Any] = []
    if load:
        steps.append(
            LoadImaged(
                keys,
                reader=ScanReader(),
                image_only=True,
                ensure_channel_first=True,
                allow_missing_keys=allow_missing_keys,
            )
        )
    steps.append(
        EnsureTyped(keys, dtype=torch.float32, track_meta=True, allow_missing_keys=allow_missing_keys)
    )
    if axcodes:
        steps.append(
            SpatialOrientationd(keys, axcodes=axcodes[:spatial_dims], allow_missing_keys=allow_missing_keys)
        )
    if spacing is not None:
        steps.append(
            AxisAlignedSpacingd(  # MONAI's Spacingd, computed per axis where it can (resampling.py)
                keys,
                pixdim=list(spacing)[:spatial_dims],
                mode=nearest_or_linear,
                allow_missing_keys=allow_missing_keys,
            )
        )
    if crop_foreground:
        if foreground_threshold is not None:
            select: Any = ForegroundAbove(foreground_threshold)
        elif intensity in ("ct", "ct_dataset"):
            select = ForegroundAbove(-500.0)
        elif intensity == "zscore_foreground":
            select = BodyForeground()
        else:
            select = ForegroundAbove(0.0)
        steps.append(
            CropForegroundd(
                keys,
                source_key=image_key,
                select_fn=select,
                margin=foreground_margin,
                allow_smaller=True,
                allow_missing_keys=allow_missing_keys,
            )
        )
    if intensity == "ct":
        steps.append(
            ScaleIntensityRanged(
                image_key, a_min=float(window[0]), a_max=float(window[1]), b_min=0.0, b_max=1.0, clip=True
            )
        )
    elif intensity == "ct_dataset":
        steps.append(dataset_ct_normalisation(image_key, intensity_clip, intensity_mean, intensity_std))
    elif intensity == "zscore_foreground":
        steps.append(ForegroundNormalizeIntensityd(image_key))
    elif intensity == "mr":
        steps.append(NormalizeIntensityd(image_key, nonzero=True, channel_wise=True))
    return Compose(steps)


def training_transforms(
    keys: Sequence[str] = ("image", "label"),
    *,
    input_patch_size: Sequence[int],
    output_patch_size: Sequence[int] | None = None,
    network: Any = None,
    image_key: str = "image",
    label_key: str = "label",
    weight_key: str = "weight",
    pos: float = 1.0,
    neg: float = 1.0,
    num_samples: int = 1,
    weight_map: bool = True,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | Sequence[float] | None = "balanced",
    num_classes: int | None = None,
    elastic_prob: float = 0.5,
    elastic_sigma: float = 10.0,
    elastic_grid: int = 3,
    rotate_prob: float = 0.5,
    rotate_deg: float = 15.0,
    shift_prob: float = 0.5,
    shift_fraction: float = 0.05,
    intensity_prob: float = 0.5,
    intensity_scale: float = 0.1,
    intensity_shift: float = 0.1,
    gamma: Sequence[float] = (0.8, 1.25),
    preprocessing: Compose | None = None,
    **preprocessing_kwargs: Any,
) -> Compose:
    """Preprocessing, weight map, label-balanced valid-convolution patch pairs and the paper's augmentations.

    The output dicts hold ``image`` at ``input_patch_size`` and ``label`` (and ``weight``) at
    ``output_patch_size``, centred on the same world point.

    Args:
        keys: image and label keys.
        input_patch_size: the network's legal input size (voxels).
        output_patch_size: the matching output size; default from ``network.output_size``
            (valid networks) or equal to the input size.
        network: a :class:`~unet_med.networks.UNet` to take the output size from.
        pos, neg: ratio of patches centred on foreground (label > 0) vs background voxels. With
            ``num_classes`` > 2 the foreground share is split evenly over the foreground classes
            (MONAI's ``RandCropByLabelClassesd``), as nnU-Net picks a foreground class first and
            then a voxel of it: a small class (a lesion beside an organ) is then centred in as
            many patches as a large one instead of in proportion to its volume.
        num_samples: patches per scan and iteration.
        weight_map: add the paper's border weight map under ``weight_key`` (before sampling,
            so distances see whole objects); ``w0``, ``sigma`` (voxels), ``class_weights``.
        elastic_prob, elastic_sigma, elastic_grid: coarse-grid elastic deformation
            (displacement std in voxels, control points per axis); ``elastic_prob=0`` turns it off.
        rotate_prob, rotate_deg: random rotation up to +-``rotate_deg`` degrees (about every axis in 3D).
        shift_prob, shift_fraction: random shift up to +-fraction of the patch size.
        intensity_prob, intensity_scale, intensity_shift, gamma: gray-value variation on the
            image (multiplicative, additive, gamma).
        preprocessing: a ready preprocessing chain; else built from ``preprocessing_kwargs``
            (see :func:`preprocessing_transforms`).
    """
    inp = tuple(int(s) for s in input_patch_size)
    if output_patch_size is None:
        output_patch_size = tuple(network.output_size(inp)) if network is not None else inp
    out = tuple(int(s) for s in output_patch_size)
    margin = valid_patch_margin(inp, out)
    nd = len(inp)
    keys = list(keys)
    if preprocessing is None:
        preprocessing_kwargs.setdefault("spatial_dims", nd)
        preprocessing = preprocessing_transforms(
            keys, image_key=image_key, label_key=label_key, allow_missing_keys=False, **preprocessing_kwargs
        )
    steps: list[Any] = list(preprocessing.transforms)
    all_keys = keys + ([weight_key] if weight_map else [])
    if weight_map:
        steps.append(
            BorderWeightMapd(
                label_key,
                weight_key,
                w0=w0,
                sigma=sigma,
                class_weights=class_weights,
                num_classes=num_classes,
            )
        )
    # Mirror every key by the context margin, then up to the input size for small scans.
    if any(margin):
        steps.append(
            BorderPadd(all_keys, spatial_border=[m for m in margin for _ in (0, 1)], mode="symmetric")
        )
    steps.append(SpatialPadd(all_keys, spatial_size=inp, mode="symmetric"))
    if num_classes is not None and int(num_classes) > 2:
        foreground = int(num_classes) - 1
        ratios = [float(neg)] + [float(pos) / foreground] * foreground
        # warn=False: a class missing from one scan just gets no patches centred in it there
        steps.append(
            RandCropByLabelClassesd(
                all_keys, label_key=label_key, spatial_size=inp, ratios=ratios, num_classes=int(num_classes),
                num_samples=num_samples, warn=False,
            )
        )  # fmt: skip
    else:
        steps.append(
            RandCropByPosNegLabeld(
                all_keys, label_key=label_key, spatial_size=inp, pos=pos, neg=neg, num_samples=num_samples
            )
        )
    spatial_modes = ["bilinear" if k != label_key else "nearest" for k in all_keys]
    if (rotate_prob > 0 and rotate_deg > 0) or (shift_prob > 0 and shift_fraction > 0):
        rot = float(np.deg2rad(rotate_deg)) if rotate_prob > 0 else 0.0
        shift = [shift_fraction * s if shift_prob > 0 else 0.0 for s in inp]
        steps.append(
            RandAffined(
                all_keys,
                prob=max(rotate_prob, shift_prob),
                rotate_range=[rot] if nd == 2 else [rot] * 3,
                translate_range=shift,
                mode=spatial_modes,
                padding_mode="reflection",
            )
        )
    if elastic_prob > 0 and elastic_sigma > 0:
        orders = [3 if k == image_key else (0 if k == label_key else 1) for k in all_keys]
        steps.append(
            RandCoarseElasticd(
                all_keys, prob=elastic_prob, sigma=elastic_sigma, grid=elastic_grid, order=orders
            )
        )
    if intensity_prob > 0:
        steps += [
            RandScaleIntensityd(image_key, factors=intensity_scale, prob=intensity_prob),
            RandShiftIntensityd(image_key, offsets=intensity_shift, prob=intensity_prob),
            RandAdjustContrastd(image_key, gamma=tuple(gamma), prob=intensity_prob),
        ]
    if any(margin):
        steps.append(CenterSpatialCropd([k for k in all_keys if k != image_key], roi_size=out))
    return Compose(steps)


def inference_transforms(
    keys: Sequence[str] = ("image",),
    *,
    image_key: str = "image",
    **preprocessing_kwargs: Any,
) -> Compose:
    """Preprocessing for prediction: the spatial steps (orientation, resampling, foreground crop)
    record themselves so :func:`prediction_inversion_transforms` maps predictions back to the
    input's exact geometry. Arguments as :func:`preprocessing_transforms`.
    """
    return preprocessing_transforms(keys, image_key=image_key, **preprocessing_kwargs)


def prediction_inversion_transforms(
    preprocessing: Compose,
    *,
    pred_key: str = "pred",
    orig_key: str = "image",
    nearest: bool = True,
) -> Compose:
    """``Invertd`` of ``preprocessing`` for ``pred_key``: back to the geometry ``orig_key`` was loaded in.

    ``pred_key`` may hold a plain tensor (e.g. an inferer's output, channel-first, the
    preprocessed image's spatial size): it is made a MetaTensor first, and ``Invertd`` replays
    the inverse of the operations recorded on ``orig_key``. ``nearest=True`` for class maps
    (argmax already taken), False for probabilities.
    """
    return Compose(
        [
            EnsureTyped(pred_key, track_meta=True),
            Invertd(
                pred_key, transform=preprocessing, orig_keys=orig_key, nearest_interp=nearest, to_tensor=True
            ),
        ]
    )
