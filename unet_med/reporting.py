"""Batch-inference reports: per-label volumes, ``report.csv`` (one row per scan, one file per
part when several machines share an output folder, merged afterwards) and QC pictures.

Report columns: ``scan_id, source, status (ok|failed|skipped), error, seconds`` then
``voxels_<label>`` and ``volume_ml_<label>`` for every foreground label. Volumes are in
millilitres: voxel count x voxel volume in mm^3 / 1000 (a 2D image counts its pixels as 1 mm
deep along the missing axis, so its "volume" is area in cm^2 x 0.1).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet_med.plots import save_qc_picture  # re-exported: report rows and QC pictures go together

__all__ = [
    "BASE_COLUMNS",
    "REPORT_NAME",
    "STATUSES",
    "label_column_name",
    "label_dice",
    "label_volumes",
    "merge_reports",
    "part_report_name",
    "read_report",
    "report_columns",
    "report_summary",
    "save_qc_picture",
    "write_report",
]

BASE_COLUMNS = ["scan_id", "source", "status", "error", "seconds"]
STATUSES = ("ok", "failed", "skipped")
REPORT_NAME = "report.csv"
_PART_PATTERN = re.compile(r"^report\.part-(\d+)-of-(\d+)\.csv$")


def label_column_name(name: str) -> str:
    """A label name as it appears in column names: lower case letters, digits and underscores."""
    cleaned = re.sub(r"[^0-9a-z]+", "_", str(name).lower()).strip("_")
    return cleaned or "label"


def report_columns(labels: Mapping[int, str], *, dice: bool = False) -> list[str]:
    """All report columns for the foreground ``labels`` ({value: name}, 0 = background excluded);
    ``dice=True`` adds ``dice_<label>`` (agreement with reference label maps)."""
    names = [label_column_name(n) for v, n in sorted(labels.items()) if v != 0]
    columns = BASE_COLUMNS + [f"voxels_{n}" for n in names] + [f"volume_ml_{n}" for n in names]
    return columns + ([f"dice_{n}" for n in names] if dice else [])


def label_dice(prediction: np.ndarray, reference: np.ndarray, labels: Mapping[int, str]) -> dict[str, float]:
    """Dice per foreground label (``monai.metrics.compute_dice``) of two label maps on one grid;
    NaN for a label absent from both.

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
    rows: Sequence[Mapping[str, Any]], path: str | Path, labels: Mapping[int, str], *, dice: bool = False
) -> Path:
    """Write report rows (sorted by ``scan_id``) as CSV, atomically."""
    import pandas as pd

    from unet_med.data.writing import write_csv

    frame = pd.DataFrame(list(rows), columns=report_columns(labels, dice=dice))
    for col in frame.columns:
        if col.startswith("voxels_"):
            frame[col] = frame[col].astype("Int64")  # counts stay integers next to empty failed rows
        elif col.startswith(("volume_ml_", "dice_")):
            frame[col] = frame[col].astype(float).round(6)
    frame = frame.sort_values("scan_id", kind="stable").reset_index(drop=True)
    return write_csv(frame, path)


def read_report(path: str | Path) -> Any:
    """A report CSV as a DataFrame (``error`` empty strings, not NaN)."""
    import pandas as pd

    frame = pd.read_csv(path, dtype={"scan_id": str, "source": str, "status": str, "error": str})
    frame["error"] = frame["error"].fillna("")
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
