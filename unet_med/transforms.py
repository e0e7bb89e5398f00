"""MONAI transform chains: preprocessing, training (valid-convolution patch pairs, the paper's
augmentations and border weight map), inference (invertible) -- one function per purpose.

Every chain is a ``monai.transforms.Compose`` built from plain arguments, so a bundle's JSON can
create it with ``{"_target_": "unet_med.transforms.training_transforms", ...}``. One code path
serves 2D (channel-first ``(C, H, W)``) and 3D (``(C, H, W, D)``) data.

Sizes are in voxels, spacings in mm, CT intensities in Hounsfield units (HU).

Intensity normalisation modes of :func:`preprocessing_transforms` (``intensity=``):

- ``"ct"``: the fixed CT window ``window`` (HU) scaled to [0, 1] (the paper bundle's setting);
- ``"ct_dataset"``: nnU-Net's CT scheme: clip to the dataset's foreground 0.5/99.5 percentiles
  ``intensity_clip`` and z-score with the dataset's foreground ``intensity_mean``/``intensity_std``
  (all from a plan's fingerprint), the same numbers for every scan;
- ``"zscore_foreground"``: per scan and channel, z-score whose mean/std come from the body
  foreground (:func:`body_foreground_mask`, Otsu), so the result does not depend on how much
  air or background the field of view holds;
- ``"mr"``: per-scan z-score over non-zero voxels (kept as it was; scanner noise makes air
  non-zero, so prefer ``"zscore_foreground"``);
- ``"none"``.

Valid-convolution patch pairs: a U-Net with unpadded convolutions maps an input tile of size
``in`` to a centred output tile of size ``out = in - 2 * margin``. Training therefore samples the
image patch at the network's legal *input* size and crops label and weight map to the matching
*output* size around the same centre, so a label voxel and the image voxel under it are the same
world point. Before sampling, every key is mirrored by ``margin`` voxels at the borders (the
paper's extrapolation by mirroring), so border voxels of the scan can be in the output too.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    BorderPadd,
    CenterSpatialCropd,
    Compose,
    CropForegroundd,
    EnsureTyped,
    Invertd,
    LoadImaged,
    MapTransform,
    NormalizeIntensity,
    NormalizeIntensityd,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    Randomizable,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
)
from monai.utils import convert_to_dst_type, ensure_tuple
from scipy import ndimage

from unet_med.data.loading import ScanReader

__all__ = [
    "BorderWeightMapd",
    "RandCoarseElasticd",
    "ForegroundAbove",
    "BodyForeground",
    "ForegroundNormalizeIntensityd",
    "body_foreground_mask",
    "border_weight_map",
    "class_balance_weights",
    "valid_patch_margin",
    "preprocessing_transforms",
    "training_transforms",
    "inference_transforms",
    "prediction_inversion_transforms",
]

INTENSITY_MODES = ("ct", "ct_dataset", "zscore_foreground", "mr", "none")
# Resampling orders as MONAI ``Spacingd`` modes: 0 and 1 run on torch ("nearest", "bilinear");
# higher spline orders (e.g. 3, nnU-Net's image order) run on scipy.
_RESAMPLE_MODES: dict[int, str] = {0: "nearest", 1: "bilinear"}
# Voxels Otsu's threshold is computed from (an even subsample of larger scans: same threshold
# to within the histogram's bin width, a fraction of the cost).
_OTSU_MAX_VOXELS = 1_000_000
# Connected pieces of a body mask smaller than this fraction of the largest are noise specks.
_SPECK_FRACTION = 0.05


# --------------------------------------------------------------------------- border weight map


def class_balance_weights(label: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Per-class weights ``N / (K * n_c)`` ("balanced"): frequent classes get less weight.

    Classes absent from ``label`` get weight 0 (they occur nowhere, so it does not matter).
    """
    label = np.asarray(label).astype(np.int64)
    k = int(max(label.max() + 1, num_classes or 0))
    counts = np.bincount(label.ravel(), minlength=k).astype(float)
    present = counts > 0
    weights = np.zeros(k)
    weights[present] = label.size / (present.sum() * counts[present])
    return weights


def _instances(label: np.ndarray) -> np.ndarray:
    """Connected components per foreground class (face connectivity), numbered 1..n."""
    out = np.zeros(label.shape, np.int32)
    structure = ndimage.generate_binary_structure(label.ndim, 1)
    offset = 0
    for c in np.unique(label):
        if c == 0:
            continue
        comps, n = ndimage.label(label == c, structure=structure)
        out[comps > 0] = comps[comps > 0] + offset
        offset += n
    return out


def border_weight_map(
    label: np.ndarray,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: str | Sequence[float] | None = "balanced",
    instances: np.ndarray | None = None,
    num_classes: int | None = None,
) -> np.ndarray:
    """The paper's weight map ``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))``.

    ``d1``/``d2`` are the distances (voxels) to the nearest and second-nearest object; the
    border term applies to background voxels, where it marks the narrow gaps that separate
    touching objects (inside an object both distances are not defined the same way, and common
    re-implementations of the paper also restrict the term to the background).

    Args:
        label: integer class map, spatial only (no channel axis), 2D or 3D.
        w0, sigma: border term amplitude and width (voxels); paper: 10 and about 5.
        class_weights: ``"balanced"`` (``N / (K n_c)`` from this label), a per-class sequence,
            or None (all 1).
        instances: optional instance map (0 = background); default: connected components of
            each foreground class.
        num_classes: number of classes for ``"balanced"`` (default ``label.max() + 1``).

    Returns:
        float32 array shaped like ``label``.

    Why our own: MONAI has no distance-based border weighting. The Euclidean distance to each
    object is computed with ``scipy.ndimage.distance_transform_edt`` inside that object's
    bounding box widened by the distance beyond which the border term is below 1e-4 * w0,
    so the cost stays proportional to the objects, not to objects x volume.
    """
    label = np.asarray(label)
    lab_int = np.rint(label).astype(np.int64)
    if class_weights is None:
        wc = np.ones(lab_int.shape, np.float64)
    else:
        table = (
            class_balance_weights(lab_int, num_classes)
            if isinstance(class_weights, str)
            else np.asarray(class_weights, dtype=float)
        )
        if isinstance(class_weights, str) and class_weights != "balanced":
            raise ValueError(f"class_weights must be 'balanced', a sequence or None, got {class_weights!r}")
        if lab_int.max() >= len(table):
            raise ValueError(f"label value {lab_int.max()} has no class weight (got {len(table)} weights)")
        wc = table[lab_int]
    inst = _instances(lab_int) if instances is None else np.asarray(instances).astype(np.int32)
    n_inst = int(inst.max())
    if w0 == 0 or n_inst < 2:
        return wc.astype(np.float32)
    reach = int(np.ceil(sigma * np.sqrt(2 * np.log(1e4))))  # d1 + d2 beyond this: term < 1e-4 w0
    d1 = np.full(lab_int.shape, np.inf)
    d2 = np.full(lab_int.shape, np.inf)
    for obj, box in enumerate(ndimage.find_objects(inst), start=1):
        if box is None:
            continue
        wide = tuple(
            slice(max(s.start - reach, 0), min(s.stop + reach, n)) for s, n in zip(box, lab_int.shape)
        )
        dist = ndimage.distance_transform_edt(inst[wide] != obj)
        a, b = d1[wide], d2[wide]
        closer = dist < a
        b[:] = np.where(closer, a, np.minimum(b, dist))
        a[:] = np.where(closer, dist, a)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
    border[inst > 0] = 0.0
    return (wc + border).astype(np.float32)


class BorderWeightMapd(MapTransform):
    """Add the paper's border weight map of ``label_key`` as ``weight_key`` (same shape and meta).

    Args:
        label_key: channel-first label (one channel; class indices).
        weight_key: key of the new map (default ``"weight"``).
        w0, sigma, class_weights, num_classes: as :func:`border_weight_map`.
        instance_key: optional channel-first instance map; default: connected components.
    """

    def __init__(
        self,
        label_key: str = "label",
        weight_key: str = "weight",
        *,
        w0: float = 10.0,
        sigma: float = 5.0,
        class_weights: str | Sequence[float] | None = "balanced",
        num_classes: int | None = None,
        instance_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__([label_key], allow_missing_keys)
        self.label_key, self.weight_key, self.instance_key = label_key, weight_key, instance_key
        self.w0, self.sigma, self.class_weights, self.num_classes = w0, sigma, class_weights, num_classes

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.label_key not in d:
            if self.allow_missing_keys:
                return d
            raise KeyError(f"BorderWeightMapd: key {self.label_key!r} not in the data")
        label = d[self.label_key]
        lab = np.asarray(label.detach().cpu() if isinstance(label, torch.Tensor) else label)
        if lab.shape[0] != 1:
            raise ValueError(f"BorderWeightMapd expects a one-channel label, got shape {tuple(lab.shape)}")
        inst = None
        if self.instance_key is not None:
            inst_t = d[self.instance_key]
            inst = np.asarray(inst_t.detach().cpu() if isinstance(inst_t, torch.Tensor) else inst_t)[0]
        weight = border_weight_map(
            lab[0],
            w0=self.w0,
            sigma=self.sigma,
            class_weights=self.class_weights,
            instances=inst,
            num_classes=self.num_classes,
        )[None]
        d[self.weight_key] = convert_to_dst_type(weight, dst=label, dtype=torch.float32)[0]
        return d


# --------------------------------------------------------------------------- elastic deformation


class RandCoarseElasticd(Randomizable, MapTransform):
    """The paper's elastic deformation: random displacements on a coarse grid, smoothly interpolated.

    Displacement vectors on a ``grid`` x ``grid`` (x ``grid``) lattice spanning the patch are drawn
    from a Gaussian with ``sigma`` voxels standard deviation and interpolated to every voxel with
    cubic splines (the paper: bicubic). All keys are resampled with the same field, mirroring at
    the borders, each with its own interpolation ``order``: 0 nearest (labels), 1 linear (weight
    maps), 3 cubic for images in 2D (``grid_sample`` has no tricubic mode, so 3D images are
    resampled trilinearly; the *field* is cubic in 2D and 3D alike).

    Why our own: MONAI's ``Rand2DElasticd``/``Rand3DElasticd`` smooth a dense random field with
    a Gaussian and ``RandGridDistortiond`` shifts grid lines per axis; neither is the paper's
    coarse-grid Gaussian displacement with cubic interpolation, in 2D and 3D alike.

    Speed: the dense field is the coarse grid times one small cubic-spline interpolation matrix
    per axis (the spline zoom is separable), and the warp is one ``torch.grid_sample`` in
    float32, multi-threaded; no dense spline evaluation in float64.

    Args:
        keys: keys to deform (channel-first, same spatial shape).
        prob: probability of deforming a sample.
        sigma: standard deviation of the grid displacements in voxels (paper: 10).
        grid: control points per axis (paper: 3).
        order: interpolation order per key (int or one per key); default 3 for the first key,
            0 for the others.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        sigma: float = 10.0,
        grid: int = 3,
        order: int | Sequence[int] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.prob, self.sigma, self.grid = prob, sigma, grid
        if order is None:
            order = [3] + [0] * (len(self.keys) - 1)
        self.order = list(ensure_tuple(order)) * (len(self.keys) if isinstance(order, int) else 1)
        if len(self.order) != len(self.keys):
            raise ValueError(f"order needs one spline order per key ({len(self.keys)}), got {order}")
        if any(o not in (0, 1, 3) for o in self.order):
            raise ValueError(f"interpolation orders must be 0, 1 or 3, got {self.order}")
        self._do = False
        self._coarse: np.ndarray | None = None

    def randomize(self, spatial_dims: int) -> None:  # type: ignore[override]
        self._do = self.R.random_sample() < self.prob
        self._coarse = self.R.normal(0.0, self.sigma, size=(spatial_dims,) + (self.grid,) * spatial_dims)

    def _axis_matrix(self, size: int) -> np.ndarray:
        """``(size, grid)`` cubic-spline zoom of each coarse control point along one axis."""
        eye = np.eye(self.grid)
        return np.stack(
            [ndimage.zoom(e, size / self.grid, order=3, mode="nearest", grid_mode=False) for e in eye], axis=1
        )

    def displacement(self, shape: Sequence[int]) -> np.ndarray:
        """Dense displacement field ``(ndim, *shape)`` in voxels from the last drawn coarse grid."""
        assert self._coarse is not None
        field = self._coarse
        for axis, size in enumerate(shape):
            # contract the control-point axis ``axis + 1`` with its interpolation matrix
            field = np.tensordot(self._axis_matrix(size), field, axes=([1], [axis + 1]))
            field = np.moveaxis(field, 0, axis + 1)
        return field

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = next(d[k] for k in self.key_iterator(d))
        shape = tuple(first.shape[1:])
        ndim = len(shape)
        self.randomize(ndim)
        if not self._do:
            return d
        # grid_sample wants normalised coordinates, last axis ordered (x, y[, z]) = reversed axes;
        # with align_corners=True voxel i of an axis of n voxels sits at 2 i / (n - 1) - 1.
        coords = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
        coords = coords + self.displacement(shape).astype(np.float32)
        scale = np.array([2.0 / max(s - 1, 1) for s in shape], np.float32).reshape((ndim,) + (1,) * ndim)
        grid = torch.from_numpy(np.moveaxis(coords * scale - 1.0, 0, -1)[..., ::-1].copy())[None]
        for key, order in zip(self.keys, self.order):
            if key not in d:
                continue
            img = d[key]
            arr = torch.as_tensor(img.detach().cpu() if isinstance(img, torch.Tensor) else img)
            mode = {0: "nearest", 1: "bilinear", 3: "bicubic" if ndim == 2 else "bilinear"}[order]
            warped = torch.nn.functional.grid_sample(
                arr.float()[None], grid, mode=mode, padding_mode="reflection", align_corners=True
            )[0].to(arr.dtype)
            d[key] = convert_to_dst_type(warped, dst=img)[0]
        return d


# --------------------------------------------------------------------------- intensity normalisation


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

    def __repr__(self) -> str:  # part of the PersistentDataset cache key
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


def _dataset_ct_normalisation(
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


def _resample_mode(order: int, name: str) -> str | int:
    if order not in range(6):
        raise ValueError(f"{name} must be a spline order 0..5 (0 nearest, 1 linear), got {order!r}")
    return _RESAMPLE_MODES.get(int(order), int(order))


# --------------------------------------------------------------------------- chains


class ForegroundAbove:
    """``CropForegroundd`` selector: voxels above ``threshold`` (picklable, unlike a lambda)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def __call__(self, x: Any) -> Any:
        return x > self.threshold

    def __repr__(self) -> str:  # part of the PersistentDataset cache key
        return f"ForegroundAbove({self.threshold})"


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
            Orientationd(keys, axcodes=axcodes[:spatial_dims], allow_missing_keys=allow_missing_keys)
        )
    if spacing is not None:
        steps.append(
            Spacingd(
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
        steps.append(_dataset_ct_normalisation(image_key, intensity_clip, intensity_mean, intensity_std))
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
        pos, neg: ratio of patches centred on foreground (label > 0) vs background voxels.
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
