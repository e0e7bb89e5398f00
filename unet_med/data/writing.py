"""Atomic writes of NIfTI volumes, CSV tables and JSON documents (temp name in the folder, then rename)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from unet_med.atomic_files import atomic_output

__all__ = ["save_nifti", "write_csv", "write_json"]


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write ``array`` (i, j, k order) with a 4x4 RAS ``affine`` (mm) as NIfTI-1, atomically."""
    import nibabel as nib

    path = Path(path)
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=float))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    with atomic_output(path) as tmp:  # the temporary name keeps .nii/.nii.gz, which nibabel reads
        nib.save(img, str(tmp))
    return path


def write_csv(frame: Any, path: str | Path) -> Path:
    """Write a pandas DataFrame as CSV (no index), atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def write_json(document: Any, path: str | Path) -> Path:
    """Write a JSON document (indented), atomically."""
    path = Path(path)
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n")
    return path
