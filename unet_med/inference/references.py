"""Reference label maps for batch inference: which scans a manifest lists, and their Dice.

A manifest (``subject_id, image, label, split``) names a NIfTI scan by its file and a DICOM series
by its folder (or first file); the scans that batch inference finds under its input folder are
matched to the manifest's rows by those resolved paths.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from unet_med.data.discovery import Scan
from unet_med.data.manifest import ManifestError, read_manifest
from unet_med.inference.report import error_text, label_dice

__all__ = ["manifest_references", "reference_agreement"]


def manifest_references(
    manifest: str | Path, split: str | None, scans: Sequence[Scan], root: str | Path
) -> tuple[dict[str, Path], dict[str, Path]]:
    """({scan_id: reference label file}, {scan_id: image path}) for the scans that the manifest
    (rows of ``split`` when given) lists: a NIfTI file by its path, a DICOM series by its folder.

    Raises:
        ManifestError: an unreadable manifest, no rows of ``split``, or (with ``split``) none of
            its images among ``scans`` (found under ``root``).
    """
    frame = read_manifest(manifest)
    if split is not None:
        frame = frame[frame["split"] == split]
        if frame.empty:
            raise ManifestError(f"{manifest}: no rows with split {split!r}")
    rows = {Path(r.image).resolve(): r for r in frame.itertuples()}
    references, listed = {}, {}
    for scan in scans:
        first = Path(scan.files[0]).resolve()
        for key in (first, first.parent) if scan.kind == "dicom" else (first,):
            if key in rows:
                listed[scan.scan_id] = key
                if rows[key].label:
                    references[scan.scan_id] = Path(rows[key].label)
                break
    if split is not None and not listed:
        raise ManifestError(f"{manifest}: none of its {split!r} images is among the scans under {root}")
    return references, listed


def reference_agreement(label_map: np.ndarray, reference: Path, labels: Mapping[int, str]) -> dict[str, Any]:
    """``dice_<label>`` columns of a label map against the reference label file on the same grid,
    or an ``error`` note when the reference cannot be read or does not fit."""
    from unet_med.data.loading import load_image

    try:
        values = load_image(reference)[0].numpy()
        return label_dice(label_map, np.rint(values), labels)
    except Exception as exc:
        return {"error": f"reference {reference}: {error_text(exc)}"}
