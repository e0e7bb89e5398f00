"""Manifest validation: every problem with its row, before anything trains.

Checks per row: subject id and split present and known; image (and label, required for train
and val rows) exist and load; no NaN/Inf in the image; label has the image's shape and world
geometry and only integer values from the declared classes (the manifest's JSON sidecar, or
``labels=``). Across rows: no subject in more than one split (leakage), train and val not empty.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from monai.data.utils import affine_to_spacing

from unet_med.data.loading import ScanLoadError, load_image
from unet_med.data.manifest import CHANNEL_SEPARATOR, SPLITS, ManifestError, manifest_labels, read_manifest

__all__ = ["ManifestProblem", "ManifestReport", "validate_manifest"]

# Splits that must not be empty; the test split may be (a dataset can keep its test set elsewhere).
REQUIRED_SPLITS = ("train", "val")


@dataclass(frozen=True)
class ManifestProblem:
    """One problem: ``row`` is the 1-based data row (CSV line = row + 1), None for manifest-wide ones."""

    row: int | None
    subject_id: str
    message: str

    def __str__(self) -> str:
        if self.row is None:
            return self.message
        who = f", subject {self.subject_id}" if self.subject_id else ""
        return f"row {self.row} (line {self.row + 1}{who}): {self.message}"


@dataclass
class ManifestReport:
    """Result of :func:`validate_manifest`: ``ok``, ``problems`` and the statistics behind ``summary()``."""

    path: Path
    problems: list[ManifestProblem] = field(default_factory=list)
    split_counts: dict[str, int] = field(default_factory=dict)
    shapes: Counter = field(default_factory=Counter)
    spacings: list[tuple[float, ...]] = field(default_factory=list)
    label_histogram: Counter = field(default_factory=Counter)
    labels: dict[int, str] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, row: int | None, subject_id: str, message: str) -> None:
        self.problems.append(ManifestProblem(row, subject_id, message))

    def summary(self) -> str:
        """One screen: counts per split, shapes, spacing range, label histogram (or the problems)."""
        lines = [f"manifest {self.path}"]
        if self.problems:
            lines.append(f"{len(self.problems)} problem(s):")
            lines += [f"  {p}" for p in self.problems]
            return "\n".join(lines)
        lines.append("splits: " + ", ".join(f"{s} {self.split_counts.get(s, 0)}" for s in SPLITS))
        top = ", ".join(f"{'x'.join(map(str, s))} ({n})" for s, n in self.shapes.most_common(5))
        more = f" and {len(self.shapes) - 5} more" if len(self.shapes) > 5 else ""
        lines.append(f"shapes: {top}{more}")
        if self.spacings:
            sp = np.asarray([s[:3] for s in self.spacings if len(s) == len(self.spacings[0])])
            lo, hi = sp.min(axis=0), sp.max(axis=0)
            lines.append(
                "spacing (mm): "
                + " x ".join(
                    f"{a:.3g}" if np.isclose(a, b, rtol=1e-3) else f"{a:.3g}-{b:.3g}" for a, b in zip(lo, hi)
                )
            )
        total = sum(self.label_histogram.values())
        if total:
            names = self.labels or {}
            parts = [
                f"{v} {names.get(v, '?')} {100 * n / total:.2f}%"
                for v, n in sorted(self.label_histogram.items())
            ]
            lines.append("label voxels: " + ", ".join(parts))
        lines.append("ok")
        return "\n".join(lines)


def _voxel_size(image: Any) -> np.ndarray:
    """Voxel edge lengths in mm of a loaded channel-first scan (its affine's column norms)."""
    affine = np.asarray(image.affine, dtype=float)
    return affine_to_spacing(affine, r=affine.shape[0] - 1, suppress_zeros=False)[: image.ndim - 1]


def _geometry_mismatch(image: Any, label: Any) -> str | None:
    nd = image.ndim - 1
    a, b = np.asarray(image.affine, dtype=float), np.asarray(label.affine, dtype=float)
    cols = list(range(nd)) + [a.shape[1] - 1]
    ra, rb = a[:3, cols], b[:3, cols]
    spacing = _voxel_size(image)
    if np.allclose(ra, rb, atol=1e-3 * float(spacing.max()) + 1e-4):
        return None
    return (
        f"image and label geometry differ: image spacing {np.round(spacing, 4).tolist()} mm, origin "
        f"{np.round(a[:3, -1], 3).tolist()}; label spacing "
        f"{np.round(_voxel_size(label), 4).tolist()} mm, "
        f"origin {np.round(b[:3, -1], 3).tolist()}"
    )


def _missing(paths: Iterable[str]) -> list[str]:
    return [p for p in paths if not Path(p).exists()]


def validate_manifest(
    path: str | Path, *, labels: dict[int, str] | Iterable[int] | None = None
) -> ManifestReport:
    """Check a manifest and everything it points to; list every problem with its row.

    Args:
        path: manifest CSV.
        labels: declared classes (``{value: name}`` or values); default: the JSON sidecar's
            ``labels``; None and no sidecar: label values are not checked against classes.

    Returns:
        A :class:`ManifestReport`; ``report.ok`` is False when any problem was found.
    """
    path = Path(path)
    report = ManifestReport(path=path)
    try:
        frame = read_manifest(path)
        declared = manifest_labels(path) if labels is None else labels
    except ManifestError as exc:
        report.add(None, "", str(exc))
        return report
    if declared is not None and not isinstance(declared, dict):
        declared = {int(v): str(v) for v in declared}
    report.labels = declared
    splits_of: dict[str, set[str]] = defaultdict(set)
    rows_of: dict[str, list[int]] = defaultdict(list)
    for rec in frame.to_dict("records"):
        row, sid, split = int(rec["row"]), rec["subject_id"], rec["split"]
        if not sid:
            report.add(row, sid, "empty subject_id")
        if split not in SPLITS:
            report.add(row, sid, f"split {split!r} is not one of {', '.join(SPLITS)}")
        else:
            report.split_counts[split] = report.split_counts.get(split, 0) + 1
            if sid:
                splits_of[sid].add(split)
                rows_of[sid].append(row)
        if not rec["image"]:
            report.add(row, sid, "empty image path")
            continue
        image_paths = rec["image"].split(CHANNEL_SEPARATOR)
        missing = _missing(image_paths)
        if missing:
            report.add(row, sid, f"image file not found: {', '.join(missing)}")
        if not rec["label"] and split in REQUIRED_SPLITS:
            report.add(row, sid, f"{split} row without a label")
        if rec["label"] and _missing([rec["label"]]):
            report.add(row, sid, f"label file not found: {rec['label']}")
        if missing:
            continue
        try:
            image = load_image(image_paths if len(image_paths) > 1 else image_paths[0], dtype=None)
        except ScanLoadError as exc:
            report.add(row, sid, f"image unreadable: {exc}")
            continue
        values = image.numpy()
        if np.issubdtype(values.dtype, np.floating):
            bad = int(np.count_nonzero(~np.isfinite(values)))
            if bad:
                report.add(row, sid, f"image has {bad} NaN/Inf voxel(s): {image_paths[0]}")
        report.shapes[tuple(image.shape[1:])] += 1
        report.spacings.append(tuple(float(s) for s in _voxel_size(image)))
        if not rec["label"] or _missing([rec["label"]]):
            continue
        try:
            label = load_image(rec["label"], dtype=None)
        except ScanLoadError as exc:
            report.add(row, sid, f"label unreadable: {exc}")
            continue
        if tuple(label.shape[1:]) != tuple(image.shape[1:]):
            report.add(
                row,
                sid,
                f"label shape {tuple(label.shape[1:])} differs from image shape {tuple(image.shape[1:])} "
                f"({rec['label']})",
            )
            continue
        if label.shape[0] != 1:
            report.add(row, sid, f"label has {label.shape[0]} channels, expected 1 ({rec['label']})")
            continue
        mismatch = _geometry_mismatch(image, label)
        if mismatch:
            report.add(row, sid, f"{mismatch} ({rec['label']})")
        lab = label.numpy()
        if not np.all(np.isfinite(lab)) or not np.array_equal(lab, np.round(lab)):
            report.add(row, sid, f"label has non-integer values ({rec['label']})")
            continue
        vals, counts = np.unique(lab.astype(np.int64), return_counts=True)
        report.label_histogram.update(dict(zip(vals.tolist(), counts.tolist())))
        if declared is not None:
            outside = sorted(set(vals.tolist()) - set(declared))
            if outside:
                report.add(
                    row,
                    sid,
                    f"label values {outside} outside the declared classes {sorted(declared)} "
                    f"({rec['label']})",
                )
    for sid, splits in sorted(splits_of.items()):
        if len(splits) > 1:
            rows = ", ".join(map(str, rows_of[sid]))
            report.add(
                None,
                sid,
                f"subject {sid} is in more than one split ({', '.join(sorted(splits))}; rows {rows})",
            )
    for split in REQUIRED_SPLITS:
        if not report.split_counts.get(split):
            report.add(None, "", f"split {split!r} is empty")
    return report
