"""Batch-inference reports: ``report.csv`` (one row per scan, one file per part when several
machines share an output folder, merged afterwards), per-label volumes and Dice, and the rows for
what discovery set aside.

Report columns: ``scan_id, source, status (ok|failed|skipped), error, seconds``, then what
discovery knows of the input (:data:`DISCOVERY_COLUMNS`: ``kind`` nifti|dicom|image|skipped-object,
``study_id`` grouping the series of one DICOM study, ``selection`` selected or ``not selected:
<rule>``, ``warning``), then ``voxels_<label>`` and ``volume_ml_<label>`` for every foreground
label (and ``dice_<label>`` with reference label maps), with ``statistics`` per-label intensity
mean/std and component counts (:mod:`unet_med.inference.measurements`), and last the seconds of
each stage (:data:`STAGE_COLUMNS`). Every row has its own ``scan_id``: the id
discovery gave the scan, file or series, whether it was segmented, failed, skipped or rejected.
Volumes are in millilitres: voxel count x voxel volume in mm^3 / 1000 (a 2D image counts its
pixels as 1 mm deep along the missing axis, so its "volume" is area in cm^2 x 0.1).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet_med.data.discovery import SkipKind, SkippedFile, safe_scan_id
from unet_med.data.loading import ScanLoadError, is_nifti, is_plain_image

__all__ = [
    "BASE_COLUMNS",
    "DISCOVERY_COLUMNS",
    "REPORT_NAME",
    "STAGE_COLUMNS",
    "STATUSES",
    "discovery_rows",
    "error_text",
    "label_column_name",
    "label_dice",
    "label_volumes",
    "mean_dice",
    "merge_reports",
    "part_report_name",
    "read_report",
    "report_columns",
    "report_summary",
    "write_report",
]

BASE_COLUMNS = ["scan_id", "source", "status", "error", "seconds"]
# What discovery knows of each input (Scan.report_fields / SkippedFile.report_fields).
DISCOVERY_COLUMNS = ["kind", "study_id", "selection", "warning"]
STATUSES = ("ok", "failed", "skipped")
REPORT_NAME = "report.csv"
# Wall seconds of each stage of a segmented scan (empty for scans not segmented in this run):
# reading the files, preprocessing (orientation, resampling, crop, normalisation), the network
# (inferer), post-processing and inversion back to the scan's grid (with --statistics, the
# measurements too), writing every output; the last three are the QC picture's, the RT Structure
# Set's and the DICOM SEG's share of seconds_write. The background loader overlaps load +
# preprocess with the previous scan's prediction, so the stages can add up to more than ``seconds``.
STAGE_COLUMNS = [
    "seconds_load",
    "seconds_preprocess",
    "seconds_predict",
    "seconds_postprocess",
    "seconds_write",
    "seconds_write_qc",
    "seconds_write_rtstruct",
    "seconds_write_dicom_seg",
]
_PART_PATTERN = re.compile(r"^report\.part-(\d+)-of-(\d+)\.csv$")


def label_column_name(name: str) -> str:
    """A label name as it appears in column names: lower case letters, digits and underscores."""
    cleaned = re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_")
    return cleaned or "label"


def report_columns(labels: Mapping[int, str], *, dice: bool = False, statistics: bool = False) -> list[str]:
    """All report columns for the foreground ``labels`` ({value: name}, 0 = background excluded);
    ``dice=True`` adds ``dice_<label>`` (agreement with reference label maps), ``statistics=True``
    the per-label intensity and component columns; the stage seconds come last."""
    names = [label_column_name(n) for v, n in sorted(labels.items()) if v != 0]
    columns = BASE_COLUMNS + DISCOVERY_COLUMNS
    columns = columns + [f"voxels_{n}" for n in names] + [f"volume_ml_{n}" for n in names]
    columns = columns + ([f"dice_{n}" for n in names] if dice else [])
    if statistics:
        from unet_med.inference.measurements import statistics_columns

        columns += statistics_columns(labels)
    return columns + STAGE_COLUMNS


def label_dice(prediction: np.ndarray, reference: np.ndarray, labels: Mapping[int, str]) -> dict[str, float]:
    """Dice per foreground label (``monai.metrics.compute_dice``) of two label maps on one grid.

    A label absent from both maps gets NaN (no evidence either way; MONAI's ``ignore_empty=False``
    would say 1.0, ``ignore_empty=True`` NaN also where only the prediction has the label); a label
    in only one of them gets 0.0. Mean Dice over a batch (:func:`mean_dice`) skips the NaNs.

    Raises:
        ValueError: when the shapes differ.
    """
    import torch
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    if np.shape(prediction) != np.shape(reference):
        raise ValueError(
            f"reference label map has shape {np.shape(reference)}, the prediction {np.shape(prediction)}"
        )
    n = max(labels) + 1
    outside = sorted(set(np.unique(reference).astype(int).tolist()) - set(range(n)))
    if outside:
        raise ValueError(f"reference label values {outside} are not among the bundle's labels 0..{n - 1}")
    pred = one_hot(torch.as_tensor(np.asarray(prediction, dtype=np.int64))[None, None], n)
    ref = one_hot(torch.as_tensor(np.asarray(reference, dtype=np.int64))[None, None], n)
    scores = compute_dice(pred, ref, include_background=True, ignore_empty=False)[0]
    both_empty = (pred.sum(dim=tuple(range(2, pred.ndim))) + ref.sum(dim=tuple(range(2, ref.ndim))))[0] == 0
    return {
        f"dice_{label_column_name(name)}": float("nan") if both_empty[v] else float(scores[v])
        for v, name in sorted(labels.items())
        if v != 0
    }


def label_volumes(
    label_map: np.ndarray, voxel_size_mm: Sequence[float], labels: Mapping[int, str]
) -> dict[str, float]:
    """Voxel counts and volumes (ml) of each foreground label of an integer ``label_map``.

    Args:
        label_map: integer labels, any shape (spatial axes only).
        voxel_size_mm: edge lengths of one voxel in mm, one per axis of ``label_map``; missing
            axes (2D) count as 1 mm.
        labels: {label value: name}; value 0 (background) is not reported.

    Returns:
        ``{"voxels_<name>": count, "volume_ml_<name>": ml}`` for every foreground label.
    """
    label_map = np.asarray(label_map)
    sizes = [float(s) for s in voxel_size_mm][: label_map.ndim]
    voxel_ml = math.prod(sizes) / 1000.0
    counts = np.bincount(label_map.ravel().astype(np.int64), minlength=max(labels) + 1 if labels else 1)
    result: dict[str, float] = {}
    for value, name in sorted(labels.items()):
        if value == 0:
            continue
        n = int(counts[value]) if value < len(counts) else 0
        col = label_column_name(name)
        result[f"voxels_{col}"] = n
        result[f"volume_ml_{col}"] = n * voxel_ml
    return result


def part_report_name(part_id: int, num_parts: int) -> str:
    """``report.csv`` for a single part, ``report.part-K-of-N.csv`` when parts share a folder."""
    return REPORT_NAME if num_parts == 1 else f"report.part-{part_id}-of-{num_parts}.csv"


def write_report(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    labels: Mapping[int, str],
    *,
    dice: bool = False,
    statistics: bool = False,
) -> Path:
    """Write report rows (sorted by ``scan_id``) as CSV, atomically."""
    import pandas as pd

    from unet_med.data.writing import write_csv

    frame = pd.DataFrame(list(rows), columns=report_columns(labels, dice=dice, statistics=statistics))
    for col in frame.columns:
        if col.startswith(("voxels_", "components_")):
            frame[col] = frame[col].astype("Int64")  # counts stay integers next to empty failed rows
        elif col.startswith(("volume_ml_", "dice_", "intensity_")):
            frame[col] = frame[col].astype(float).round(6)
        elif col.startswith("seconds_"):
            frame[col] = frame[col].astype(float).round(4)
    frame = frame.sort_values("scan_id", kind="stable").reset_index(drop=True)
    return write_csv(frame, path)


def read_report(path: str | Path) -> Any:
    """A report CSV as a DataFrame (``error`` empty strings, not NaN)."""
    import pandas as pd

    text = {c: str for c in ["scan_id", "source", "status", "error", *DISCOVERY_COLUMNS]}
    frame = pd.read_csv(path, dtype=text)
    for col in ["error", *DISCOVERY_COLUMNS]:
        if col in frame.columns:
            frame[col] = frame[col].fillna("")
    return frame


def merge_reports(out_dir: str | Path) -> Path:
    """Merge the per-part reports ``report.part-K-of-N.csv`` of ``out_dir`` into ``report.csv``.

    A scan reported by several parts (a part re-run with another split) keeps the row of the
    most recently written part report.

    Raises:
        FileNotFoundError: no part reports in ``out_dir``.
        ValueError: part reports with different column sets (bundles with other labels).
    """
    import pandas as pd

    from unet_med.data.writing import write_csv

    out_dir = Path(out_dir)
    parts = sorted(
        (p for p in out_dir.glob("report.part-*-of-*.csv") if _PART_PATTERN.match(p.name)),
        key=lambda p: os.stat(p).st_mtime,
    )
    if not parts:
        raise FileNotFoundError(f"{out_dir}: no part reports (report.part-K-of-N.csv) to merge")
    frames = [read_report(p) for p in parts]
    columns = list(frames[0].columns)
    for p, f in zip(parts, frames):
        if list(f.columns) != columns:
            raise ValueError(
                f"{p}: columns {list(f.columns)} differ from {parts[0].name}'s {columns}; "
                "reports of different bundles cannot be merged"
            )
    merged = pd.concat(frames, ignore_index=True).drop_duplicates("scan_id", keep="last")
    merged = merged.sort_values("scan_id", kind="stable").reset_index(drop=True)
    return write_csv(merged, out_dir / REPORT_NAME)


def report_summary(statuses: Sequence[str]) -> dict[str, int]:
    """Counts per status (``ok``, ``failed``, ``skipped``)."""
    return {s: sum(1 for x in statuses if x == s) for s in STATUSES}


# What a skipped file becomes in the report, by the kind discovery gave it: no row (not a scan at
# all), or a "skipped" row (a DICOM object that holds no image). Every other kind is a "failed"
# scan: an unreadable, truncated or 4D NIfTI/image file, a broken series, an unreadable DICOM header.
_STATUS_OF_SKIP: dict[SkipKind, str | None] = {
    SkipKind.HIDDEN: None,
    SkipKind.NOT_DICOM: None,
    SkipKind.NON_IMAGE_OBJECT: "skipped",
    SkipKind.DICOMDIR: "skipped",
    SkipKind.NO_PIXEL_DATA: "skipped",
    SkipKind.NOT_SELECTED: "skipped",
}


def discovery_rows(skipped: Sequence[SkippedFile]) -> list[dict[str, Any]]:
    """Report rows for what discovery set aside, decided by each file's :class:`SkipKind`: a
    NIfTI/image file (even a hidden one) or a broken DICOM series is a *failed* scan; a non-image
    DICOM object (SEG, RTSTRUCT, DICOMDIR, no pixel data) is *skipped* with its reason; a scan that
    fails a selection rule is *skipped* with the rule in ``selection``; other files (no DICOM
    preamble, hidden files) are not scans and get no row. Each row keeps discovery's unique id."""
    rows = []
    for item in skipped:
        path = str(item.path)
        scan_file = is_nifti(path) or is_plain_image(path)
        status = "failed" if scan_file and item.kind != SkipKind.NOT_SELECTED else _STATUS_OF_SKIP.get(
            item.kind, "failed"
        )
        if status is None:
            continue
        scan_id = item.scan_id or safe_scan_id(re.sub(r"(\.nii\.gz|\.nii|\.[A-Za-z]+)$", "", path))
        error = "" if item.kind == SkipKind.NOT_SELECTED else item.reason
        row = {"scan_id": scan_id, "source": path, "status": status, "error": error, **item.report_fields()}
        rows.append({**row, "seconds": 0.0})
    return rows


def error_text(exc: BaseException) -> str:
    """The ``error`` column for a scan that failed: one line, at most 500 characters; the exception
    type is named unless the message already names the scan (load errors, ``scan <id>: ...``)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, ScanLoadError) or text.startswith("scan "):
        return text[:500]
    return f"{type(exc).__name__}: {text}"[:500]


def mean_dice(rows: Sequence[Mapping[str, Any]]) -> tuple[float, int] | None:
    """(mean of every ``dice_<label>`` value that is not NaN, number of rows with Dice columns), or
    None when no row has a Dice value."""
    values = [
        float(v) for r in rows for k, v in r.items()
        if k.startswith("dice_") and v is not None and not math.isnan(float(v))
    ]
    scored = sum(1 for r in rows if any(k.startswith("dice_") for k in r))
    return (sum(values) / len(values), scored) if values else None
