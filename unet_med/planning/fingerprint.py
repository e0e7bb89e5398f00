"""Dataset fingerprint: what a plan needs to know about the training scans, read once.

:func:`dataset_fingerprint` loads every training scan of a manifest (and its label) through the
project's loader (MONAI ``LoadImage`` with :class:`~unet_med.data.loading.ScanReader`), in the
orientation training uses (RAS), and records, as plain JSON-serialisable data:

- per scan: spacing (mm) and shape (voxels) before and after the foreground crop that
  preprocessing applies for the dataset's modality (the bounding box of voxels above -500 HU for
  CT, of the Otsu body mask :func:`~unet_med.transforms.body_foreground_mask` otherwise; see
  :func:`~unet_med.transforms.preprocessing_transforms`), channels and spatial dimensionality,
  voxel counts and volumes (ml) per label value, the modality evidence;
- per channel: foreground intensity statistics from voxels with label > 0, as nnU-Net does:
  up to ``samples_per_scan`` voxels per scan drawn with a seeded generator, pooled into mean,
  std, median, 0.5/99.5 percentiles, min and max;
- label classes: voxel counts and frequencies per class value, the scans holding each class;
- the modality, decided by (first that applies) the ``modality`` argument, the DICOM
  ``Modality`` tag, the manifest sidecar's ``"modality"``, or the intensity rule
  (:func:`modality_from_intensities`);
- the manifest's path, SHA-256, split counts and declared label names.

Bad input stops here, before any training, with one :class:`FingerprintError` naming the scan
(subject id and path): scans disagreeing in channels or dimensionality, an image and label of
different shapes, label values outside the declared classes, a modality the rules cannot decide.

:func:`cached_fingerprint` keeps the result in ``<cache_dir>/fingerprint.json`` and reuses it
while the manifest's hash (and the arguments) are unchanged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FINGERPRINT_VERSION",
    "MODALITIES",
    "FingerprintError",
    "cached_fingerprint",
    "dataset_fingerprint",
    "modality_from_intensities",
]

log = logging.getLogger(__name__)

FINGERPRINT_VERSION = 1
MODALITIES = ("CT", "MR", "other")
FINGERPRINT_FILE = "fingerprint.json"
# nnU-Net samples 10,000 foreground voxels per case for its intensity statistics.
SAMPLES_PER_SCAN = 10_000
# Voxels the modality rule looks at per scan (an even subsample of larger scans).
_MODALITY_MAX_VOXELS = 1_000_000
# The intensity rule for scans without a DICOM tag (see modality_from_intensities).
AIR_HU = -900.0
AIR_FRACTION_CT = 0.01
DENSE_HU = 300.0


class FingerprintError(ValueError):
    """Training data that cannot be planned; the message names the scan, the expectation and
    what was found."""


# --------------------------------------------------------------------------- modality


def modality_from_intensities(p_low: float, p_high: float, air_fraction: float) -> str | None:
    """The modality that a scan's intensities show, or None when they do not decide it.

    The rule (for NIfTI and other files without a DICOM ``Modality`` tag):

    - **CT** when at least 1% of the voxels are <= -900 (air in Hounsfield units, or the
      scanner's padding value -1024/-3024) and the bright end (99.9th percentile) reaches
      >= 300 (bone, contrast): the HU scale;
    - **MR** when the intensities are non-negative (0.1th percentile >= -1% of the range):
      MR magnitudes and other arbitrary-unit scans;
    - otherwise undecided (e.g. CT without air or bone in the field of view, or data that was
      normalised already): the user must say, with ``--modality``.

    Args:
        p_low, p_high: 0.1th and 99.9th percentiles of the scan's voxels.
        air_fraction: fraction of voxels <= -900.
    """
    if air_fraction >= AIR_FRACTION_CT and p_high >= DENSE_HU:
        return "CT"
    if p_low >= -0.01 * max(p_high - p_low, 1e-6):
        return "MR"
    return None


def _normalised_modality(value: str, source: str) -> str:
    """``CT``, ``MR`` or ``other`` from a user argument, a DICOM tag or a sidecar value."""
    text = str(value).strip()
    upper = text.upper()
    if upper in ("CT", "MR"):
        return upper
    if source == "argument" and text.lower() != "other":
        raise FingerprintError(f"modality must be one of {list(MODALITIES)}, got {value!r}")
    return "other"


def _dicom_modality(path: Path) -> str | None:
    """The ``Modality`` tag of the first readable DICOM file of a series folder or file, or None."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError):
            continue
        value = str(ds.get("Modality", "")).strip()
        if value:
            return value
    return None


def _is_dicom_source(paths: Sequence[str]) -> bool:
    from unet_med.data.loading import is_nifti, is_plain_image

    return not any(is_nifti(p) or is_plain_image(p) for p in paths)


# --------------------------------------------------------------------------- per scan


def _scan_name(item: dict[str, Any]) -> str:
    image = item["image"]
    path = ";".join(image) if isinstance(image, list) else str(image)
    return f"scan {item.get('subject_id', '?')} ({path})"


def _load_oriented(path: Any, dtype: Any, name: str) -> Any:
    """Load with the project's loader and orient to RAS (as training's preprocessing does)."""
    from monai.transforms import Orientation

    from unet_med.data.loading import ScanLoadError, load_image

    try:
        img = load_image(path, dtype=dtype)
    except ScanLoadError as exc:
        raise FingerprintError(f"{name}: {exc}") from None
    dims = img.ndim - 1
    if dims not in (2, 3):
        raise FingerprintError(f"{name}: a 2D or 3D image is expected, found shape {tuple(img.shape[1:])}")
    return Orientation(axcodes="RAS"[:dims], labels=(("L", "R"), ("P", "A"), ("I", "S")))(img)


# The foreground crop of preprocessing_transforms per modality: above -500 HU for CT, the Otsu
# body mask otherwise.
CT_BODY_HU = -500.0


def _box_shape(mask: np.ndarray) -> list[int]:
    """Bounding-box size of a mask (the whole array when the mask is empty)."""
    if not mask.any():
        return [int(n) for n in mask.shape]
    return [int(i.max() - i.min() + 1) for i in np.nonzero(mask)]


def _cropped_shapes(image: np.ndarray) -> dict[str, list[int]]:
    """Shape after each modality's foreground crop (channels united, as ``CropForegroundd``)."""
    from unet_med.transforms import body_foreground_mask

    body = np.zeros(image.shape[1:], bool)
    for channel in image:
        body |= body_foreground_mask(channel)
    return {"CT": _box_shape((image > CT_BODY_HU).any(axis=0)), "body": _box_shape(body)}


def _modality_evidence(image: np.ndarray) -> dict[str, float]:
    flat = image.ravel()
    flat = flat[:: max(1, flat.size // _MODALITY_MAX_VOXELS)].astype(np.float64)
    flat = flat[np.isfinite(flat)]
    p_low, p_high = (float(v) for v in np.percentile(flat, [0.1, 99.9]))
    return {
        "p0_1": p_low,
        "p99_9": p_high,
        "air_fraction": float(np.mean(flat <= AIR_HU)),
        "min": float(flat.min()),
        "max": float(flat.max()),
    }


def _label_counts(label: np.ndarray, name: str, allowed: set[int] | None) -> dict[int, int]:
    if not np.all(np.isfinite(label)) or not np.array_equal(label, np.round(label)):
        bad = label[~np.isfinite(label) | (label != np.round(label))]
        raise FingerprintError(f"{name}: label must hold integer class values, found {float(bad.flat[0])!r}")
    values, counts = np.unique(label.astype(np.int64), return_counts=True)
    if allowed is not None:
        outside = [int(v) for v in values if int(v) not in allowed]
        if outside:
            raise FingerprintError(
                f"{name}: label values {outside} are outside the declared classes {sorted(allowed)} "
                "(manifest sidecar 'labels' or num_classes); fix the label or declare the classes"
            )
    return {int(v): int(c) for v, c in zip(values, counts)}


def _scan_record(
    item: dict[str, Any],
    rng: np.random.Generator,
    samples_per_scan: int,
    allowed: set[int] | None,
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """One scan's fingerprint entry and its per-channel foreground intensity samples."""
    name = _scan_name(item)
    image_t = _load_oriented(item["image"], np.float32, name)
    image = np.asarray(image_t.detach().cpu())
    spacing = [float(s) for s in np.asarray(image_t.pixdim, dtype=float)[: image.ndim - 1]]
    sources = item["image"] if isinstance(item["image"], list) else [item["image"]]
    record: dict[str, Any] = {
        "subject_id": str(item.get("subject_id", "")),
        "image": ";".join(str(p) for p in sources),
        "label": item.get("label"),
        "channels": int(image.shape[0]),
        "spatial_dims": int(image.ndim - 1),
        "spacing": spacing,
        "shape": [int(s) for s in image.shape[1:]],
    }
    record["cropped_shapes"] = _cropped_shapes(image)
    record["modality_evidence"] = _modality_evidence(image)
    if _is_dicom_source([str(p) for p in sources]):
        record["dicom_modality"] = _dicom_modality(Path(sources[0]))
    samples: list[np.ndarray] = []
    if item.get("label"):
        label_t = _load_oriented(item["label"], None, f"{name} label {item['label']}")
        label = np.asarray(label_t.detach().cpu())
        if label.shape[0] != 1:
            raise FingerprintError(
                f"{name}: label {item['label']} must have one channel, found {label.shape[0]}"
            )
        label = label[0]
        if label.shape != image.shape[1:]:
            raise FingerprintError(
                f"{name}: label {item['label']} has shape {tuple(label.shape)}, the image "
                f"{tuple(image.shape[1:])} (after orientation to RAS); they must cover the same voxels"
            )
        counts = _label_counts(label, name, allowed)
        voxel_ml = float(np.prod(spacing)) / 1000.0
        record["label_voxels"] = {str(k): v for k, v in counts.items()}
        record["label_volume_ml"] = {str(k): v * voxel_ml for k, v in counts.items() if k != 0}
        foreground = label > 0
        n_fg = int(foreground.sum())
        if n_fg:
            take = rng.choice(n_fg, size=min(n_fg, samples_per_scan), replace=False)
            samples = [channel[foreground][take].astype(np.float64) for channel in image]
    return record, samples


# --------------------------------------------------------------------------- dataset


def _intensity_statistics(samples: np.ndarray) -> dict[str, float]:
    if samples.size == 0:
        return {}
    p = np.percentile(samples, [0.5, 50.0, 99.5])
    return {
        "mean": float(samples.mean()),
        "std": float(samples.std()),
        "median": float(p[1]),
        "percentile_00_5": float(p[0]),
        "percentile_99_5": float(p[2]),
        "min": float(samples.min()),
        "max": float(samples.max()),
        "n_samples": int(samples.size),
    }


def _check_consistent(records: list[dict[str, Any]]) -> None:
    first = records[0]
    for rec in records[1:]:
        for key, what in (("spatial_dims", "spatial dimensionality"), ("channels", "channels")):
            if rec[key] != first[key]:
                raise FingerprintError(
                    f"scan {rec['subject_id']} ({rec['image']}) has {what} {rec[key]} where the "
                    f"first scan {first['subject_id']} ({first['image']}) has {first[key]}; every scan "
                    "of a dataset needs the same"
                )


def _decide_modality(
    records: list[dict[str, Any]], override: str | None, sidecar: dict[str, Any]
) -> tuple[str, str]:
    """(modality, how it was decided) for the dataset; FingerprintError naming the scan when the
    rules cannot decide or the scans disagree."""
    from unet_med.data.loading import is_plain_image

    if override is not None:
        return _normalised_modality(override, "argument"), "--modality argument"
    verdicts: list[tuple[str, dict[str, Any], str]] = []
    for rec in records:
        if rec.get("dicom_modality"):
            verdicts.append((_normalised_modality(rec["dicom_modality"], "dicom"), rec, "DICOM Modality tag"))
    if verdicts:
        sources = "DICOM Modality tag"
    elif sidecar.get("modality"):
        return _normalised_modality(sidecar["modality"], "sidecar"), "manifest sidecar 'modality'"
    else:
        sources = "intensity rule"
        for rec in records:
            if all(is_plain_image(p) for p in rec["image"].split(";")):
                verdicts.append(("other", rec, "PNG/TIFF image"))
                continue
            ev = rec["modality_evidence"]
            verdict = modality_from_intensities(ev["p0_1"], ev["p99_9"], ev["air_fraction"])
            if verdict is None:
                raise FingerprintError(
                    f"scan {rec['subject_id']} ({rec['image']}): the modality cannot be decided from "
                    f"its intensities (0.1-99.9th percentile {ev['p0_1']:.4g} to {ev['p99_9']:.4g}, "
                    f"{100 * ev['air_fraction']:.2g}% of voxels <= {AIR_HU:g}): neither CT (>= "
                    f"{100 * AIR_FRACTION_CT:g}% air <= {AIR_HU:g} HU and a bright end >= {DENSE_HU:g} HU) "
                    'nor non-negative like MR; pass --modality CT|MR|other (or set "modality" in the '
                    "manifest's JSON sidecar)"
                )
            verdicts.append((verdict, rec, "intensity rule"))
    first_modality, first_rec, _ = verdicts[0]
    for modality, rec, how in verdicts[1:]:
        if modality != first_modality:
            raise FingerprintError(
                f"scan {rec['subject_id']} ({rec['image']}) looks like {modality} ({how}) but scan "
                f"{first_rec['subject_id']} ({first_rec['image']}) like {first_modality}; a dataset has "
                "one modality: check the manifest or pass --modality CT|MR|other"
            )
    return first_modality, sources


def _declared_classes(labels: dict[int, str] | None, num_classes: int | None) -> set[int] | None:
    if num_classes is not None:
        return set(range(int(num_classes)))
    if labels:
        return set(labels)
    return None


def dataset_fingerprint(
    manifest: str | Path,
    *,
    split: str | Sequence[str] = "train",
    modality: str | None = None,
    num_classes: int | None = None,
    samples_per_scan: int = SAMPLES_PER_SCAN,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Read every scan of ``split`` once and describe the dataset (see the module docstring).

    Args:
        manifest: manifest CSV (:mod:`unet_med.data.manifest`).
        split: the split(s) whose scans are read (the training scans by default).
        modality: ``"CT"``, ``"MR"`` or ``"other"`` to override the detected modality.
        num_classes: declared label classes ``0..num_classes-1``; default: the manifest sidecar's
            ``labels``; with neither, label values are not checked.
        samples_per_scan: foreground voxels sampled per scan for the intensity statistics.
        seed: seed of the voxel sampling (equal arguments give an equal fingerprint).
        progress: show a tqdm progress bar over the scans.

    Returns:
        A JSON-serialisable dict: ``fingerprint_version, manifest, manifest_sha256, split,
        split_counts, labels, num_classes, modality, modality_source, modality_override,
        spatial_dims, channels, scans`` (one record each), ``intensity`` (``per_channel``
        statistics, sampling settings), ``classes`` (voxels, frequency, scans per class value).

    Raises:
        FingerprintError: bad data, naming the scan (see the module docstring).
        ManifestError: an unreadable manifest.
    """
    from tqdm import tqdm

    from unet_med.data.manifest import (
        manifest_datalist,
        manifest_labels,
        manifest_sha256,
        manifest_sidecar,
        read_manifest,
    )

    manifest = Path(manifest).resolve()
    if modality is not None:
        modality = _normalised_modality(modality, "argument")
    items = manifest_datalist(manifest, split)
    if not items:
        raise FingerprintError(f"{manifest}: no scans in split {split!r} to plan from")
    labels = manifest_labels(manifest)
    sidecar_path = manifest_sidecar(manifest)
    sidecar = json.loads(sidecar_path.read_text()) if sidecar_path.is_file() else {}
    allowed = _declared_classes(labels, num_classes)
    rng = np.random.default_rng(seed)
    records: list[dict[str, Any]] = []
    pooled: list[list[np.ndarray]] = []
    for item in tqdm(items, desc="fingerprint", unit="scan", disable=not progress):
        record, samples = _scan_record(item, rng, samples_per_scan, allowed)
        records.append(record)
        if (
            records[0]["spatial_dims"] != record["spatial_dims"]
            or records[0]["channels"] != record["channels"]
        ):
            _check_consistent(records)  # fail at the first disagreeing scan, not after reading all
        if samples:
            pooled.append(samples)
    chosen, source = _decide_modality(records, modality, sidecar)
    for rec in records:
        rec["cropped_shape"] = rec.pop("cropped_shapes")["CT" if chosen == "CT" else "body"]
    channels = records[0]["channels"]
    per_channel = [
        _intensity_statistics(np.concatenate([s[c] for s in pooled]) if pooled else np.empty(0))
        for c in range(channels)
    ]
    class_voxels: dict[str, int] = {}
    class_scans: dict[str, int] = {}
    for rec in records:
        for value, count in rec.get("label_voxels", {}).items():
            class_voxels[value] = class_voxels.get(value, 0) + count
            class_scans[value] = class_scans.get(value, 0) + 1
    total = sum(class_voxels.values()) or 1
    order = sorted(class_voxels, key=int)
    split_counts = read_manifest(manifest)["split"].value_counts()
    return {
        "fingerprint_version": FINGERPRINT_VERSION,
        "manifest": str(manifest),
        "manifest_sha256": manifest_sha256(manifest),
        "split": split if isinstance(split, str) else list(split),
        "split_counts": {s: int(split_counts.get(s, 0)) for s in ("train", "val", "test")},
        "labels": {str(k): v for k, v in labels.items()} if labels else None,
        "num_classes": num_classes,
        "modality": chosen,
        "modality_source": source,
        "modality_override": modality,
        "spatial_dims": records[0]["spatial_dims"],
        "channels": channels,
        "scans": records,
        "intensity": {
            "per_channel": per_channel,
            "samples_per_scan": samples_per_scan,
            "seed": seed,
            "source": "voxels with label > 0",
        },
        "classes": {
            v: {"voxels": class_voxels[v], "frequency": class_voxels[v] / total, "scans": class_scans[v]}
            for v in order
        },
    }


def cached_fingerprint(manifest: str | Path, cache_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """:func:`dataset_fingerprint`, kept in ``<cache_dir>/fingerprint.json``.

    The cached file is reused when it was computed for the same manifest bytes (SHA-256), the
    same declared labels (sidecar) and the same arguments (``split``, ``modality``,
    ``num_classes``, ``samples_per_scan``, ``seed``); otherwise the fingerprint is recomputed
    and the file replaced atomically. One log line says which.
    """
    from unet_med.atomic_files import atomic_output
    from unet_med.data.manifest import manifest_labels, manifest_sha256

    manifest = Path(manifest).resolve()
    path = Path(cache_dir) / FINGERPRINT_FILE
    sha = manifest_sha256(manifest)
    labels = manifest_labels(manifest)
    wanted = {
        "fingerprint_version": FINGERPRINT_VERSION,
        "manifest_sha256": sha,
        "labels": {str(k): v for k, v in labels.items()} if labels else None,
        "split": split if isinstance(split := kwargs.get("split", "train"), str) else list(split),
        "modality_override": (
            _normalised_modality(kwargs["modality"], "argument") if kwargs.get("modality") else None
        ),
        "num_classes": kwargs.get("num_classes"),
    }
    wanted_sampling = {k: kwargs[k] for k in ("samples_per_scan", "seed") if k in kwargs}
    reason = "no cached fingerprint"
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
        except ValueError:
            cached, reason = None, "the cached fingerprint is unreadable"
        if cached is not None:
            differs = [k for k, v in wanted.items() if cached.get(k) != v]
            sampling = cached.get("intensity", {})
            differs += [k for k, v in wanted_sampling.items() if sampling.get(k) != v]
            if not differs:
                log.info("fingerprint: reusing %s (manifest sha256 %s unchanged)", path, sha[:12])
                return cached
            reason = "changed since the cached fingerprint: " + ", ".join(differs)
    log.info("fingerprint: computing for %s (%s)", manifest, reason)
    fingerprint = dataset_fingerprint(manifest, **kwargs)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(fingerprint, indent=2) + "\n")
    return fingerprint
