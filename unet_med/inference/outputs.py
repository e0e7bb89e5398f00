"""The files batch inference writes per scan, their names, and how a finished scan is recognised.

Per scan, in ``OUT_DIR``: ``<stem>_seg.nii.gz`` (uint8 labels in the scan's own geometry),
``<stem>_qc.png`` (a QC picture) and, for DICOM inputs on request, ``<stem>_seg.dcm`` (a DICOM SEG
referencing the source series) and ``<stem>_rtstruct.dcm`` (an RT Structure Set of the same
series). The stem comes from the scan id and cannot leave ``OUT_DIR``. The NIfTI is written last
and atomically, so its presence (readable, of the scan's shape) means the scan is complete.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from unet_med.data.discovery import Scan

__all__ = [
    "DICOM_SEG_SUFFIX",
    "QC_SUFFIX",
    "RTSTRUCT_SUFFIX",
    "SEG_SUFFIX",
    "completed_output",
    "finished_segmentation",
    "output_path",
    "output_stem",
    "write_scan_outputs",
]

SEG_SUFFIX = "_seg.nii.gz"
QC_SUFFIX = "_qc.png"
DICOM_SEG_SUFFIX = "_seg.dcm"
RTSTRUCT_SUFFIX = "_rtstruct.dcm"

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def output_stem(scan_id: str) -> str:
    """A file-name stem for a scan id that cannot leave OUT_DIR: only ``[A-Za-z0-9._-]``, no
    leading dot, at most 120 characters; a short hash of the id is appended whenever the id had
    to be changed, so two ids never share outputs."""
    stem = _SAFE.sub("_", scan_id).lstrip(".")[:120] or "scan"
    if stem != scan_id:
        stem = f"{stem}_{hashlib.sha1(scan_id.encode()).hexdigest()[:8]}"
    return stem


def output_path(out_dir: Path, scan_id: str, suffix: str) -> Path:
    """``out_dir/<stem><suffix>``; ``ValueError`` if it would resolve outside ``out_dir``."""
    path = out_dir / f"{output_stem(scan_id)}{suffix}"
    if path.resolve().parent != out_dir.resolve():
        raise ValueError(f"scan {scan_id!r}: output path {path} would leave {out_dir}")
    return path


def completed_output(
    path: Path, expected_shape: Sequence[int] | None
) -> tuple[np.ndarray, list[float]] | None:
    """(label map, voxel size in mm) of a finished ``_seg.nii.gz``, or ``None`` when it is
    missing, unreadable or of the wrong shape (then the scan is segmented again)."""
    import nibabel as nib

    if not path.is_file():
        return None
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception:
        return None
    if expected_shape is not None and tuple(data.shape) != tuple(expected_shape):
        return None
    return data, [float(z) for z in img.header.get_zooms()[: data.ndim]]


def finished_segmentation(
    out_dir: Path, scan: Scan, *, dicom_seg: bool, rtstruct: bool = False
) -> tuple[np.ndarray, list[float]] | None:
    """(label map, voxel size in mm) when ``scan`` was segmented into ``out_dir`` before: its
    NIfTI is complete and, for a DICOM scan, its DICOM SEG (with ``dicom_seg``) and its RT
    Structure Set (with ``rtstruct``) exist; else None.

    Raises:
        ValueError: when the scan id would give an output path outside ``out_dir``.
    """
    shape = getattr(scan, "shape", None)
    done = completed_output(output_path(out_dir, scan.scan_id, SEG_SUFFIX), tuple(shape) if shape else None)
    if done is not None and dicom_seg and scan.kind == "dicom":
        done = done if output_path(out_dir, scan.scan_id, DICOM_SEG_SUFFIX).is_file() else None
    if done is not None and rtstruct and scan.kind == "dicom":
        done = done if output_path(out_dir, scan.scan_id, RTSTRUCT_SUFFIX).is_file() else None
    return done


def write_scan_outputs(
    out_dir: Path,
    scan: Scan,
    label_map: np.ndarray,
    affine: np.ndarray,
    *,
    labels: Mapping[int, str],
    qc_image: np.ndarray | None = None,
    dicom_seg: bool = False,
    algorithm_name: str = "unet-med",
    algorithm_version: str = "0",
    rtstruct: bool = False,
) -> Path:
    """Write the outputs of one segmented scan; the NIfTI last, so it marks the scan complete.

    Args:
        out_dir: the output folder.
        scan: the scan (its id names the files; DICOM scans' files are the SEG's source).
        label_map: uint8 labels in the scan's grid, (i, j[, k]) order.
        affine: 4x4 RAS voxel-to-world affine of the scan (mm).
        labels: {label value: name}; the DICOM SEG's segments and the RT Structure Set's ROIs are
            the foreground labels.
        qc_image: the scan's first channel: writes the QC picture (None: no picture).
        dicom_seg: also write a DICOM SEG when the scan is a DICOM series.
        algorithm_name, algorithm_version: the DICOM SEG's algorithm identification (and the
            RT Structure Set's ROI generation description).
        rtstruct: also write an RT Structure Set when the scan is a DICOM series.

    Returns:
        The label map's NIfTI path.
    """
    from unet_med.data.writing import save_nifti
    from unet_med.dicom.seg import write_dicom_seg
    from unet_med.dicom.series import series_files
    from unet_med.plots import save_qc_picture

    if qc_image is not None:
        save_qc_picture(
            qc_image, label_map, output_path(out_dir, scan.scan_id, QC_SUFFIX), title=scan.scan_id
        )
    if rtstruct and scan.kind == "dicom":
        from unet_med.dicom.rtstruct import write_rtstruct

        write_rtstruct(
            label_map,
            series_files(list(scan.files), f"scan {scan.scan_id}"),
            labels,
            output_path(out_dir, scan.scan_id, RTSTRUCT_SUFFIX),
            algorithm_name=algorithm_name,
            algorithm_version=algorithm_version,
        )
    if dicom_seg and scan.kind == "dicom":
        write_dicom_seg(
            label_map,
            series_files(list(scan.files), f"scan {scan.scan_id}"),
            labels,
            output_path(out_dir, scan.scan_id, DICOM_SEG_SUFFIX),
            algorithm_name=algorithm_name,
            algorithm_version=algorithm_version,
        )
    return save_nifti(label_map, affine, output_path(out_dir, scan.scan_id, SEG_SUFFIX))
