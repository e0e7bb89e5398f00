"""Dataset manifests: CSV files with ``subject_id, image, label, split[, fold]`` read into MONAI data lists.

Paths are relative to the manifest's own folder or absolute. ``image`` is a NIfTI file, a DICOM
series folder, a PNG/TIFF image, or several channel files joined by ``;`` (e.g. nnU-Net's
``case_0000.nii.gz;case_0001.nii.gz``). ``label`` is empty for unlabelled scans. ``split`` is one
of ``train``, ``val``, ``test``; the optional integer ``fold`` drives cross-validation (without it, a
seeded split of the train/val rows does: :func:`fold_assignment`).

A manifest may have a JSON sidecar with the same stem (``manifest.csv`` -> ``manifest.json``)
declaring ``{"labels": {"0": "background", "1": "organ", ...}}``: the label classes that
validation checks against and that training names its per-class metrics after.

Checking a manifest and the files it names is :func:`unet_med.data.validation.validate_manifest`
(validation reads manifests; this module does not import it).
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "REQUIRED_COLUMNS",
    "SPLITS",
    "ManifestError",
    "read_manifest",
    "fold_assignment",
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


def _pool_mask(frame: Any) -> Any:
    """Rows of the cross-validation training pool: split ``train`` or ``val``."""
    return frame["split"].isin(["train", "val"])


def _check_folds(path: str | Path, num_folds: Any, fold: Any = None) -> tuple[int, int | None]:
    """``(num_folds, fold)`` as ints once ``num_folds >= 2`` and ``0 <= fold < num_folds``."""

    def as_int(value: Any) -> int | None:
        try:
            return None if isinstance(value, bool) else operator.index(value)
        except TypeError:
            return None

    count = as_int(num_folds)
    if count is None or count < 2:
        raise ManifestError(f"{path}: num_folds must be an integer >= 2, got {num_folds!r}")
    if fold is None:
        return count, None
    index = as_int(fold)
    if index is None or not 0 <= index < count:
        raise ManifestError(
            f"{path}: fold must be an integer in 0..{count - 1} (num_folds={count}), got {fold!r}"
        )
    return count, index


def _column_folds(path: str | Path, frame: Any, num_folds: int) -> dict[int, int] | None:
    """{frame index: fold} of the pool rows from the manifest's ``fold`` column, or None when the
    manifest has no fold column or leaves it empty on every pool row (a seeded split then)."""
    if "fold" not in frame.columns:
        return None
    pool = frame[_pool_mask(frame)]
    if not (pool["fold"] != "").any():
        return None
    blank = pool[pool["fold"] == ""]
    if len(blank):
        rows = ", ".join(f"{r.row} ({r.subject_id})" for r in blank.head(5).itertuples())
        raise ManifestError(
            f"{path}: the 'fold' column is empty on {len(blank)} train/val row(s), e.g. row(s) {rows}; "
            f"give every train/val row a fold in 0..{num_folds - 1}, or leave the column empty on all "
            f"of them for a seeded split"
        )
    folds: dict[int, int] = {}
    for rec in pool.itertuples():
        try:
            value = int(rec.fold)
        except ValueError:
            value = -1
        if not 0 <= value < num_folds:
            raise ManifestError(
                f"{path}: row {rec.row} ({rec.subject_id}): fold {rec.fold!r} is not an integer in "
                f"0..{num_folds - 1} (num_folds={num_folds}; pass num_folds to match the manifest's folds)"
            )
        folds[rec.Index] = value
    per_subject = pool.assign(fold_index=pool.index.map(folds)).groupby("subject_id")["fold_index"].nunique()
    split_subjects = sorted(per_subject[per_subject > 1].index)
    if split_subjects:
        raise ManifestError(
            f"{path}: subject(s) {', '.join(split_subjects[:5])} have train/val rows in more than one fold "
            f"of the 'fold' column; a subject's rows must share one fold (else it trains and validates)"
        )
    return folds


def _seeded_folds(path: str | Path, frame: Any, num_folds: int, seed: int) -> dict[str, int]:
    """{subject_id: fold} for the pool's subjects: sorted by subject_id, shuffled by a permutation
    seeded with ``seed``, then dealt round-robin to the folds (sizes differ by at most one)."""
    import numpy as np

    subjects = sorted(set(frame.loc[_pool_mask(frame), "subject_id"]))
    if len(subjects) < num_folds:
        raise ManifestError(
            f"{path}: cannot split a training pool of {len(subjects)} subject(s) (split train/val) into "
            f"{num_folds} non-empty folds; use num_folds <= {len(subjects)} or add a 'fold' column"
        )
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ManifestError(f"{path}: the fold split's seed must be an integer, got {seed!r}")
    order = np.random.default_rng(int(seed)).permutation(len(subjects))
    return {subjects[int(j)]: i % num_folds for i, j in enumerate(order)}


def _row_folds(path: str | Path, frame: Any, num_folds: int, seed: int) -> dict[int, int]:
    """{frame index: fold} of every pool row: the fold column when it is filled, else seeded."""
    column = _column_folds(path, frame, num_folds)
    if column is not None:
        return column
    by_subject = _seeded_folds(path, frame, num_folds, seed)
    pool = frame[_pool_mask(frame)]
    return {index: by_subject[subject] for index, subject in zip(pool.index, pool["subject_id"])}


def fold_assignment(path: str | Path, num_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """{subject_id: fold} of the training pool (rows of split ``train`` or ``val``), the split
    that :func:`manifest_datalist` uses with a ``fold``.

    With a ``fold`` column filled on the pool rows, its values. Without one (or with the column
    empty on every pool row), a seeded split: the pool's subject ids sorted, permuted by
    ``numpy.random.default_rng(seed)`` and dealt round-robin to ``num_folds`` folds, so a subject
    lands in the same fold for the same pool, ``seed`` and ``num_folds``, every fold is non-empty,
    and fold sizes differ by at most one. All rows of one subject share its fold (with a fold
    column, a subject's rows must agree).

    Raises:
        ManifestError: naming the manifest: ``num_folds < 2``, fewer pool subjects than folds, a
            fold column empty on some pool rows or holding values outside ``0..num_folds-1``.
    """
    num_folds, _ = _check_folds(path, num_folds)
    frame = read_manifest(path, resolve=False)
    rows = _row_folds(path, frame, num_folds, seed)
    return {str(frame.at[index, "subject_id"]): fold for index, fold in rows.items()}


def manifest_datalist(
    path: str | Path,
    split: str | Sequence[str] | None = None,
    *,
    fold: int | None = None,
    num_folds: int = 5,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The manifest's rows as a MONAI data list: dicts with ``image``, ``label`` (only when the row
    has one), ``subject_id`` and ``split``.

    Args:
        path: manifest CSV.
        split: one split name or several; None for all rows.
        fold: cross-validation fold, ``0 <= fold < num_folds``; None: the ``split`` column decides.
            With a fold, ``"val"`` means the rows of the training pool (split train or val) in that
            fold and ``"train"`` the other pool rows; ``"test"`` is unaffected. The folds come
            from the manifest's ``fold`` column, or a seeded split without one
            (:func:`fold_assignment`).
        num_folds: number of folds (>= 2); used only with ``fold``.
        seed: seed of the split of a manifest without a fold column; used only with ``fold``.

    Raises:
        ManifestError: unknown split name, a bad ``fold``/``num_folds``, or a pool that cannot be
            split (see :func:`fold_assignment`); the message names the manifest.
    """
    frame = read_manifest(path)
    wanted = [split] if isinstance(split, str) else (list(split) if split is not None else list(SPLITS))
    unknown = [s for s in wanted if s not in SPLITS]
    if unknown:
        raise ManifestError(f"{path}: unknown split(s) {unknown}; expected one of {list(SPLITS)}")
    if fold is not None:
        num_folds, fold = _check_folds(path, num_folds, fold)
        rows = _row_folds(path, frame, num_folds, seed)
        pool = _pool_mask(frame)
        in_fold = frame.index.to_series().map(rows) == fold
        if not in_fold.any():  # only a fold column can leave a fold empty
            raise ManifestError(
                f"{path}: fold {fold} has no train/val rows in the 'fold' column (it holds folds "
                f"{sorted(set(rows.values()))})"
            )
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


def manifest_class_names(path: str | Path, default: Sequence[str]) -> list[str]:
    """Class names, background first, as a training needs them: the manifest sidecar's ``labels``
    (``0..max``; a gap gets ``label_<k>``), else ``default`` (also while the manifest does not
    exist yet, e.g. before a bundle generates its demo dataset, or for tools that only build the
    network)."""
    labels = manifest_labels(path) if Path(path).is_file() else None
    if not labels:
        return [str(name) for name in default]
    return [labels.get(i, "background" if i == 0 else f"label_{i}") for i in range(max(labels) + 1)]
