"""Atomic writes of NIfTI volumes, CSV tables and JSON documents (temp name in the folder, then rename)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["save_nifti", "write_csv", "write_json"]


def _temp_name(path: Path) -> Path:
    # Keep the suffix so writers that pick a format from it (nibabel) still do the right thing.
    return path.with_name(f".{path.name}.{os.getpid()}.tmp{''.join(path.suffixes)}")


def save_nifti(array: np.ndarray, affine: np.ndarray, path: str | Path) -> Path:
    """Write ``array`` (i, j, k order) with a 4x4 RAS ``affine`` (mm) as NIfTI-1, atomically."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(array), np.asarray(affine, dtype=float))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    tmp = _temp_name(path)
    nib.save(img, str(tmp))
    tmp.replace(path)
    return path


def write_csv(frame: Any, path: str | Path) -> Path:
    """Write a pandas DataFrame as CSV (no index), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    frame.to_csv(tmp, index=False)
    tmp.replace(path)
    return path


def write_json(document: Any, path: str | Path) -> Path:
    """Write a JSON document (indented), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)
    return path
