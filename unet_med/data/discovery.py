"""Scan discovery: NIfTI files, DICOM series and 2D images under a folder; why other files were skipped.

DICOM files are grouped by SeriesInstanceUID, not by folder: a folder may hold several series
(each becomes a scan) and a series may be spread over folders. Slices are ordered along the
slice normal and checked for missing slices, irregular spacing and mixed sizes; a broken series
is skipped with the reason. Only headers are read, so discovery is fast.

Every skipped file carries a :class:`SkipKind` (for code: batch inference decides from it whether
a skipped file is a failed scan, a skipped object or no scan at all) and a reason (for humans).

A scan's ``scan_id`` is built from its path relative to the root (plus a short hash of the
SeriesInstanceUID for DICOM), made safe as a file name. It never uses patient name or ID tags.
"""

from __future__ import annotations

import enum
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unet_med.data.loading import IMAGE_SUFFIXES, NIFTI_SUFFIXES, is_nifti, is_plain_image
from unet_med.dicom.series import (
    DicomSeriesError,
    NotAnImageFile,
    NotAnImageKind,
    SliceHeader,
    check_series,
    order_series,
    read_slice_header,
    series_hash,
)

__all__ = ["Scan", "SkipKind", "SkippedFile", "ScanDiscovery", "discover_scans", "safe_scan_id"]


@dataclass
class Scan:
    """One scan found on disk.

    Attributes:
        scan_id: stable id from the relative path (+ series-UID hash for DICOM); file-name safe.
        kind: ``"nifti"``, ``"dicom"`` or ``"image"`` (PNG/TIFF/JPEG).
        source: path relative to the discovery root (DICOM: the folder holding the series' files).
        files: absolute paths; DICOM: ordered along the slice normal.
        series_uid: SeriesInstanceUID for DICOM, else None.
        shape: spatial size in voxels, (i, j[, k]) order.
        spacing: voxel spacing in mm per axis (pixel units for PNG/TIFF).
    """

    scan_id: str
    kind: str
    source: str
    files: list[Path]
    series_uid: str | None = None
    shape: tuple[int, ...] = ()
    spacing: tuple[float, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no series UID, no file list; ``files`` is a count)."""
        return {
            "scan_id": self.scan_id,
            "kind": self.kind,
            "source": self.source,
            "files": len(self.files),
            "shape": list(self.shape),
            "spacing": [round(float(s), 6) for s in self.spacing],
        }


class SkipKind(enum.Enum):
    """Why discovery set a file (or a DICOM series, by its folder) aside."""

    HIDDEN = "hidden"  # a name starting with "."
    NOT_DICOM = "not_dicom"  # neither NIfTI, plain image nor DICOM: notes, spreadsheets, ...
    DICOMDIR = "dicomdir"  # the index file of a DICOM medium
    NON_IMAGE_OBJECT = "non_image_object"  # DICOM SEG, RTSTRUCT, SR, presentation states, ...
    NO_PIXEL_DATA = "no_pixel_data"  # a DICOM image modality without pixel data
    NO_SERIES_UID = "no_series_uid"  # a DICOM image without SeriesInstanceUID
    UNREADABLE_DICOM = "unreadable_dicom"  # truncated or corrupt DICOM header
    BROKEN_SERIES = "broken_series"  # missing slices, irregular spacing, mixed sizes or orientations
    UNREADABLE_NIFTI = "unreadable_nifti"  # a NIfTI header that nibabel cannot read
    TRUNCATED_NIFTI = "truncated_nifti"  # fewer bytes on disk than the header needs
    NOT_2D_OR_3D = "not_2d_or_3d"  # a 4D (or higher) NIfTI
    UNREADABLE_IMAGE = "unreadable_image"  # a PNG/TIFF/JPEG that SimpleITK cannot read


# The skip kind of each reason why a DICOM file is not an image slice.
_DICOM_SKIP_KINDS = {
    NotAnImageKind.NOT_DICOM: SkipKind.NOT_DICOM,
    NotAnImageKind.DICOMDIR: SkipKind.DICOMDIR,
    NotAnImageKind.NON_IMAGE_OBJECT: SkipKind.NON_IMAGE_OBJECT,
    NotAnImageKind.NO_PIXEL_DATA: SkipKind.NO_PIXEL_DATA,
    NotAnImageKind.NO_SERIES_UID: SkipKind.NO_SERIES_UID,
    NotAnImageKind.UNREADABLE_HEADER: SkipKind.UNREADABLE_DICOM,
}


@dataclass
class SkippedFile:
    """A file (or a broken DICOM series, by its folder) that is not a usable scan: ``kind`` says
    why for code, ``reason`` for humans (with the details: modality, sizes, file names)."""

    path: str
    reason: str
    kind: SkipKind


@dataclass
class ScanDiscovery:
    """What :func:`discover_scans` found: scans (sorted by id) and skipped files (sorted by path)."""

    root: Path
    scans: list[Scan] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: scans as :meth:`Scan.as_dict`, skipped files as ``{"path", "reason"}``."""
        return {
            "scans": [s.as_dict() for s in self.scans],
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


def safe_scan_id(text: str) -> str:
    """``text`` reduced to ``[A-Za-z0-9._-]`` (other runs become ``_``), never empty."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")
    return cleaned or "scan"


def _strip_suffix(name: str) -> str:
    lower = name.lower()
    for suffix in NIFTI_SUFFIXES[::-1] + IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _nifti_scan(path: Path, rel: str) -> Scan | SkippedFile:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except Exception as exc:
        return SkippedFile(
            rel, f"unreadable NIfTI header ({type(exc).__name__}: {exc})", SkipKind.UNREADABLE_NIFTI
        )
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 3:
        return SkippedFile(
            rel, f"{len(shape)}D NIfTI of shape {shape}; expected a 2D or 3D volume", SkipKind.NOT_2D_OR_3D
        )
    if not path.name.lower().endswith(".gz"):
        voxels = int(np.prod(img.shape))
        expected = int(img.header.get_data_offset()) + int(img.header.get_data_dtype().itemsize) * voxels
        size = path.stat().st_size
        if size < expected:
            reason = f"truncated NIfTI: {size} bytes on disk, the header needs {expected}"
            return SkippedFile(rel, reason, SkipKind.TRUNCATED_NIFTI)
    return _file_scan(path, rel, "nifti", shape, zooms)


def _image_scan(path: Path, rel: str) -> Scan | SkippedFile:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        return SkippedFile(
            rel, f"unreadable image file ({str(exc).strip().splitlines()[-1]})", SkipKind.UNREADABLE_IMAGE
        )
    shape = tuple(int(s) for s in reader.GetSize())
    return _file_scan(path, rel, "image", shape, tuple(float(s) for s in reader.GetSpacing()))


def _file_scan(path: Path, rel: str, kind: str, shape: tuple[int, ...], spacing: tuple[float, ...]) -> Scan:
    """A scan stored in one file (NIfTI or plain image); a single-slice 3D shape counts as 2D."""
    if len(shape) == 3 and shape[-1] == 1:
        shape = shape[:2]
    return Scan(
        scan_id=safe_scan_id(_strip_suffix(rel)),
        kind=kind,
        source=rel,
        files=[path],
        shape=shape,
        spacing=tuple(spacing)[: len(shape)],
    )


def _common_folder(paths: list[Path], root: Path) -> str:
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    rel = common.relative_to(root).as_posix()
    return "" if rel == "." else rel


def _dicom_scan(headers: list[SliceHeader], root: Path) -> Scan | SkippedFile:
    folder = _common_folder([h.path for h in headers], root)
    uid = headers[0].series_uid
    sid = safe_scan_id(f"{folder}_{series_hash(uid)}" if folder else f"dicom_{series_hash(uid)}")
    name = f"DICOM series {sid} ({len(headers)} files in {folder or '.'})"
    try:
        ordered = order_series(headers)
        geometry = check_series(ordered, name)
    except DicomSeriesError as exc:
        return SkippedFile(folder or ".", str(exc), SkipKind.BROKEN_SERIES)
    return Scan(
        scan_id=sid,
        kind="dicom",
        source=folder or ".",
        files=[h.path for h in ordered],
        series_uid=uid,
        shape=geometry.shape,
        spacing=geometry.spacing,
    )


def discover_scans(root: str | Path) -> ScanDiscovery:
    """Find every NIfTI file, DICOM series and PNG/TIFF image under ``root`` (recursively).

    Files that are not scans (no DICOM preamble, no pixel data, DICOMDIR, SEG/RTSTRUCT/SR objects,
    unreadable or 4D NIfTI, hidden files) and broken DICOM series are listed in ``skipped``
    with a reason instead of raising.

    Raises:
        FileNotFoundError: ``root`` does not exist; NotADirectoryError: it is a file.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"{root}: folder not found")
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder")
    root = root.resolve()
    result = ScanDiscovery(root=root)
    series: dict[str, list[SliceHeader]] = defaultdict(list)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fname in sorted(filenames):
            path = Path(dirpath) / fname
            rel = path.relative_to(root).as_posix()
            if fname.startswith("."):
                result.skipped.append(SkippedFile(rel, "hidden file", SkipKind.HIDDEN))
            elif is_nifti(fname):
                found = _nifti_scan(path, rel)
                (result.scans if isinstance(found, Scan) else result.skipped).append(found)  # type: ignore[arg-type]
            elif is_plain_image(fname):
                found = _image_scan(path, rel)
                (result.scans if isinstance(found, Scan) else result.skipped).append(found)  # type: ignore[arg-type]
            else:
                try:
                    header = read_slice_header(path)
                except NotAnImageFile as exc:
                    result.skipped.append(SkippedFile(rel, str(exc), _DICOM_SKIP_KINDS[exc.kind]))
                    continue
                series[header.series_uid].append(header)
    for headers in series.values():
        found = _dicom_scan(headers, root)
        (result.scans if isinstance(found, Scan) else result.skipped).append(found)  # type: ignore[arg-type]
    # Make ids unique (e.g. case.nii next to case.nii.gz) with a numbered suffix.
    seen: dict[str, int] = {}
    for scan in sorted(result.scans, key=lambda s: (s.scan_id, s.source)):
        n = seen.get(scan.scan_id, 0)
        seen[scan.scan_id] = n + 1
        if n:
            scan.scan_id = f"{scan.scan_id}-{n + 1}"
    result.scans.sort(key=lambda s: s.scan_id)
    result.skipped.sort(key=lambda s: s.path)
    return result
