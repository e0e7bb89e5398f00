"""The files batch inference writes per scan, their names, and how a finished scan is recognised.

Per scan, in ``OUT_DIR``: ``<stem>_seg.nii.gz`` (uint8 labels in the scan's own geometry),
``<stem>_qc.png`` (a QC picture) and, for DICOM inputs on request, ``<stem>_seg.dcm`` (a DICOM SEG
referencing the source series), ``<stem>_rtstruct.dcm`` (an RT Structure Set of the same series)
and, on request, ``<stem>_probabilities.nii.gz`` (the softmax: :func:`write_probabilities`). The
stem comes from the scan id and cannot leave ``OUT_DIR``. The NIfTI is written last and
atomically, so its presence (readable, of the scan's shape) means the scan is complete.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from unet_med.data.discovery import Scan

__all__ = [
    "DICOM_SEG_SUFFIX",
    "PROBABILITIES_SUFFIX",
    "QC_SUFFIX",
    "RTSTRUCT_SUFFIX",
    "SEG_SUFFIX",
    "completed_output",
    "finished_segmentation",
    "output_path",
    "output_stem",
    "write_probabilities",
    "write_scan_outputs",
]

SEG_SUFFIX = "_seg.nii.gz"
QC_SUFFIX = "_qc.png"
DICOM_SEG_SUFFIX = "_seg.dcm"
PROBABILITIES_SUFFIX = "_probabilities.nii.gz"
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
    out_dir: Path, scan: Scan, *, dicom_seg: bool, probabilities: bool = False, rtstruct: bool = False
) -> tuple[np.ndarray, list[float]] | None:
    """(label map, voxel size in mm) when ``scan`` was segmented into ``out_dir`` before: its
    NIfTI is complete and, for a DICOM scan, its DICOM SEG (with ``dicom_seg``) and its RT
    Structure Set (with ``rtstruct``) exist (with ``probabilities``, its probabilities file too);
    else None.

    Raises:
        ValueError: when the scan id would give an output path outside ``out_dir``.
    """
    shape = getattr(scan, "shape", None)
    done = completed_output(output_path(out_dir, scan.scan_id, SEG_SUFFIX), tuple(shape) if shape else None)
    if done is not None and dicom_seg and scan.kind == "dicom":
        done = done if output_path(out_dir, scan.scan_id, DICOM_SEG_SUFFIX).is_file() else None
    if done is not None and probabilities:
        done = done if output_path(out_dir, scan.scan_id, PROBABILITIES_SUFFIX).is_file() else None
    if done is not None and rtstruct and scan.kind == "dicom":
        done = done if output_path(out_dir, scan.scan_id, RTSTRUCT_SUFFIX).is_file() else None
    return done


def write_probabilities(probabilities: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Write class probabilities ``(C, *spatial)`` as one 4D NIfTI ``(i, j, k, C)`` with the scan's
    ``affine``: class c is volume c (the 4th axis, as viewers page through a 4D NIfTI); a 2D scan is
    stored as ``(i, j, 1, C)``.

    Values are rounded to float16 precision (about 3 significant digits) and stored as float32:
    NIfTI has no float16 type (nibabel refuses it), a scaled-integer encoding would break the sum
    to 1, and the zeroed low mantissa bits let gzip shrink the file towards float16's size (on a
    smooth 3-class 128x128x40 softmax: 63% of plain float32, 1.35x a compressed float16 ``.npz``).
    """
    from unet_med.data.writing import save_nifti

    array = np.moveaxis(np.asarray(probabilities), 0, -1)
    if array.ndim == 3:  # 2D: (i, j, C) -> (i, j, 1, C)
        array = array[:, :, None, :]
    return save_nifti(array.astype(np.float16).astype(np.float32), affine, path)


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
    probabilities: np.ndarray | None = None,
    seconds: dict[str, float] | None = None,
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
        probabilities: the softmax ``(C, *spatial)`` in the scan's grid: writes
            ``<stem>_probabilities.nii.gz`` (:func:`write_probabilities`); None: no file.
        seconds: filled with the wall seconds of ``write_qc``, ``write_rtstruct`` and
            ``write_dicom_seg`` (0 when not written).

    Returns:
        The label map's NIfTI path.
    """
    from unet_med.data.writing import save_nifti
    from unet_med.dicom.rtstruct import write_rtstruct
    from unet_med.dicom.seg import write_dicom_seg
    from unet_med.dicom.series import series_files
    from unet_med.plots import save_qc_picture

    seconds = {} if seconds is None else seconds
    start = time.perf_counter()
    if qc_image is not None:
        save_qc_picture(
            qc_image, label_map, output_path(out_dir, scan.scan_id, QC_SUFFIX), title=scan.scan_id
        )
    seconds["write_qc"] = time.perf_counter() - start
    # DICOM objects referencing the source series (its headers read once for both)
    is_dicom = scan.kind == "dicom" and (rtstruct or dicom_seg)
    files = series_files(list(scan.files), f"scan {scan.scan_id}") if is_dicom else None
    for wanted, write, suffix, stage in (
        (rtstruct, write_rtstruct, RTSTRUCT_SUFFIX, "write_rtstruct"),
        (dicom_seg, write_dicom_seg, DICOM_SEG_SUFFIX, "write_dicom_seg"),
    ):
        start = time.perf_counter()
        if wanted and files is not None:
            write(label_map, files, labels, output_path(out_dir, scan.scan_id, suffix),
                  algorithm_name=algorithm_name, algorithm_version=algorithm_version)  # fmt: skip
        seconds[stage] = time.perf_counter() - start
    if probabilities is not None:
        write_probabilities(probabilities, affine, output_path(out_dir, scan.scan_id, PROBABILITIES_SUFFIX))
    return save_nifti(label_map, affine, output_path(out_dir, scan.scan_id, SEG_SUFFIX))
