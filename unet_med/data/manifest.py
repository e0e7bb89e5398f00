"""Dataset manifests: CSV files with ``subject_id, image, label, split[, fold]`` read into MONAI data lists.

Paths are relative to the manifest's own folder or absolute. ``image`` is a NIfTI file, a DICOM
series folder, a PNG/TIFF image, or several channel files joined by ``;`` (e.g. nnU-Net's
``case_0000.nii.gz;case_0001.nii.gz``). ``label`` is empty for unlabelled scans. ``split`` is one
of ``train``, ``val``, ``test``; the optional integer ``fold`` drives cross-validation.

A manifest may have a JSON sidecar with the same stem (``manifest.csv`` -> ``manifest.json``)
declaring ``{"labels": {"0": "background", "1": "organ", ...}}``: the label classes that
validation checks against and that training names its per-class metrics after.

Checking a manifest and the files it names is :func:`unet_med.data.validation.validate_manifest`
(validation reads manifests; this module does not import it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "REQUIRED_COLUMNS",
    "SPLITS",
    "ManifestError",
    "read_manifest",
    "manifest_datalist",
    "manifest_sha256",
    "manifest_labels",
    "manifest_sidecar",
]

REQUIRED_COLUMNS = ("subject_id", "image", "label", "split")
SPLITS = ("train", "val", "test")
CHANNEL_SEPARATOR = ";"


class ManifestError(ValueError):
    """A manifest that cannot be read at all (missing file or columns); the message names it."""


def _resolve(value: str, root: Path) -> str:
    if not value:
        return ""
    parts = [p.strip() for p in value.split(CHANNEL_SEPARATOR) if p.strip()]
    resolved = [str(p if Path(p).is_absolute() else (root / p)) for p in parts]
    return CHANNEL_SEPARATOR.join(resolved)


def read_manifest(path: str | Path, *, resolve: bool = True) -> Any:
    """Read a manifest CSV into a pandas DataFrame (all columns as strings, empty for missing).

    Args:
        path: the CSV file.
        resolve: make ``image``/``label`` absolute, relative to the manifest's folder.

    Returns:
        DataFrame with at least ``subject_id, image, label, split`` (and ``fold`` if present),
        plus ``row``: the 1-based data row number (line number minus one) used in reports.

    Raises:
        ManifestError: file missing or unreadable, or required columns absent.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except Exception as exc:
        raise ManifestError(f"{path}: not a readable CSV ({type(exc).__name__}: {exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ManifestError(
            f"{path}: missing column(s) {', '.join(missing)}; "
            f"expected {', '.join(REQUIRED_COLUMNS)}[, fold], "
            f"found {', '.join(frame.columns) or 'none'}"
        )
    for col in frame.columns:
        frame[col] = frame[col].astype(str).str.strip()
    if resolve:
        root = path.resolve().parent
        frame["image"] = [_resolve(v, root) for v in frame["image"]]
        frame["label"] = [_resolve(v, root) for v in frame["label"]]
    frame.insert(0, "row", range(1, len(frame) + 1))
    return frame


def _image_entry(value: str) -> str | list[str]:
    parts = value.split(CHANNEL_SEPARATOR)
    return parts if len(parts) > 1 else parts[0]


def manifest_datalist(
    path: str | Path, split: str | Sequence[str] | None = None, *, fold: int | None = None
) -> list[dict[str, Any]]:
    """The manifest's rows as a MONAI data list: dicts with ``image``, ``label`` (only when the row
    has one), ``subject_id`` and ``split``.

    Args:
        path: manifest CSV.
        split: one split name or several; None for all rows.
        fold: cross-validation fold. With a fold, ``"val"`` means the rows of the training pool
            (split train or val) whose ``fold`` equals it and ``"train"`` the other pool rows;
            ``"test"`` is unaffected.

    Raises:
        ManifestError: unknown split name, or ``fold`` given for a manifest without a fold column.
    """
    frame = read_manifest(path)
    wanted = [split] if isinstance(split, str) else (list(split) if split is not None else list(SPLITS))
    unknown = [s for s in wanted if s not in SPLITS]
    if unknown:
        raise ManifestError(f"{path}: unknown split(s) {unknown}; expected one of {list(SPLITS)}")
    if fold is not None:
        if "fold" not in frame.columns:
            raise ManifestError(f"{path}: fold={fold} requested but the manifest has no 'fold' column")
        pool = frame["split"].isin(["train", "val"])
        in_fold = frame["fold"] == str(fold)
        masks = {"train": pool & ~in_fold, "val": pool & in_fold, "test": frame["split"] == "test"}
        keep = masks[wanted[0]]
        for s in wanted[1:]:
            keep = keep | masks[s]
    else:
        keep = frame["split"].isin(wanted)
    items = []
    for rec in frame[keep].to_dict("records"):
        item: dict[str, Any] = {
            "image": _image_entry(rec["image"]),
            "subject_id": rec["subject_id"],
            "split": rec["split"],
        }
        if rec["label"]:
            item["label"] = rec["label"]
        items.append(item)
    return items


def manifest_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of the manifest file's bytes (what MLflow records as ``data.manifest_sha256``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_sidecar(path: str | Path) -> Path:
    """The JSON sidecar path of a manifest (same folder and stem, ``.json``)."""
    return Path(path).with_suffix(".json")


def manifest_labels(path: str | Path) -> dict[int, str] | None:
    """Declared label classes ``{index: name}`` from the manifest's JSON sidecar, or None without one."""
    sidecar = manifest_sidecar(path)
    if not sidecar.is_file():
        return None
    try:
        labels = json.loads(sidecar.read_text()).get("labels")
    except (ValueError, AttributeError) as exc:
        raise ManifestError(f"{sidecar}: not a readable JSON object ({exc})") from None
    if labels is None:
        return None
    try:
        return {int(k): str(v) for k, v in labels.items()}
    except (ValueError, AttributeError):
        raise ManifestError(
            f"{sidecar}: 'labels' must map integer class values to names, got {labels!r}"
        ) from None
