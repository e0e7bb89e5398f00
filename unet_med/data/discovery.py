"""Scan discovery: NIfTI files, DICOM series and 2D images under a folder; why other files were skipped.

DICOM files are grouped by SeriesInstanceUID, not by folder: a folder may hold several series
(each becomes a scan) and a series may be spread over folders. Slices are ordered along the
slice normal and checked for missing slices, irregular spacing and mixed sizes; a broken series
is skipped with the reason. Only headers are read, so discovery is fast.

Every skipped file carries a :class:`SkipKind` (for code: batch inference decides from it whether
a skipped file is a failed scan, a skipped object or no scan at all) and a reason (for humans).

A scan's ``scan_id`` is built from its path relative to the root (plus a short hash of the
SeriesInstanceUID for DICOM), made safe as a file name. It never uses patient name or ID tags.
Every skipped file or broken series gets an id the same way, unique among all of them and the
scans (a numbered suffix on a clash), so each report row has its own id. A DICOM series also
gets a ``study_id`` (a short hash of its StudyInstanceUID) that groups the series of one study.

With selection rules (:class:`~unet_med.dicom.selection.SeriesSelection`), a scan that fails a
rule is set aside as ``NOT_SELECTED`` with the rule as its reason; a broken series that fails a
rule is "not selected" rather than broken (a localizer in three orientations is not an error).
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
from unet_med.dicom.selection import SeriesSelection, plane_of_normal
from unet_med.dicom.series import (
    DicomSeriesError,
    NotAnImageFile,
    NotAnImageKind,
    SliceHeader,
    check_series,
    drop_duplicate_instances,
    order_series,
    read_slice_header,
    series_hash,
    series_properties,
)

__all__ = ["Scan", "SkipKind", "SkippedFile", "ScanDiscovery", "discover_scans", "safe_scan_id", "study_id"]


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
        study_id: ``study_<hash of StudyInstanceUID>`` for DICOM, else empty.
        properties: what selection rules read (:func:`~unet_med.dicom.series.series_properties`).
        selection: ``selected`` or ``not selected: <rule> ...`` when rules were given, else empty.
        warning: what was accepted but worth knowing (e.g. duplicate files of one image ignored).
    """

    scan_id: str
    kind: str
    source: str
    files: list[Path]
    series_uid: str | None = None
    shape: tuple[int, ...] = ()
    spacing: tuple[float, ...] = ()
    study_id: str = ""
    properties: dict[str, Any] = field(default_factory=dict, repr=False)
    selection: str = ""
    warning: str = ""

    def report_fields(self) -> dict[str, str]:
        """The report columns that come from discovery: ``kind``, ``study_id``, ``selection``,
        ``warning``."""
        return {
            "kind": self.kind, "study_id": self.study_id, "selection": self.selection, "warning": self.warning
        }

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no series UID, no file list; ``files`` is a count)."""
        return {
            "scan_id": self.scan_id,
            "kind": self.kind,
            "source": self.source,
            "files": len(self.files),
            "shape": list(self.shape),
            "spacing": [round(float(s), 6) for s in self.spacing],
            "study_id": self.study_id,
            "selection": self.selection,
            "warning": self.warning,
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
    NOT_SELECTED = "not_selected"  # a usable scan that fails a selection rule


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
    """A file (or a DICOM series, by its folder) that is not a usable scan: ``kind`` says why for
    code, ``reason`` for humans (with the details: modality, sizes, file names).

    ``scan_id`` is unique among everything discovery found; ``input_kind`` is the report's ``kind``
    (``nifti``, ``dicom``, ``image``, ``skipped-object`` for DICOM objects that hold no image,
    ``other``); ``scan`` is the scan itself when it was only not selected."""

    path: str
    reason: str
    kind: SkipKind
    scan_id: str = ""
    input_kind: str = ""
    study_id: str = ""
    selection: str = ""
    scan: Scan | None = field(default=None, repr=False)

    def report_fields(self) -> dict[str, str]:
        """The report columns that come from discovery: ``kind``, ``study_id``, ``selection``,
        ``warning``."""
        return {
            "kind": self.input_kind, "study_id": self.study_id, "selection": self.selection, "warning": ""
        }


@dataclass
class ScanDiscovery:
    """What :func:`discover_scans` found: scans (sorted by id) and skipped files (sorted by path)."""

    root: Path
    scans: list[Scan] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: scans as :meth:`Scan.as_dict`, skipped files as ``{"path", "reason", "scan_id",
        "kind"}`` (``kind`` as in the report: nifti, dicom, image, skipped-object, other)."""
        return {
            "scans": [s.as_dict() for s in self.scans],
            "skipped": [
                {"path": s.path, "reason": s.reason, "scan_id": s.scan_id, "kind": s.input_kind}
                for s in self.skipped
            ],
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
    scan = _file_scan(path, rel, "nifti", shape, zooms)
    scan.properties["orientation"] = plane_of_normal(np.asarray(img.affine)[:3, 2])
    return scan


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
    spacing = tuple(float(s) for s in spacing)[: len(shape)]
    properties = {
        "kind": kind,
        "slices": shape[2] if len(shape) > 2 else 1,
        "orientation": None,
        "pixel_spacing": spacing[:2],
        "slice_spacing": spacing[2] if len(shape) > 2 else None,
    }
    return Scan(
        scan_id=_file_id(rel),
        kind=kind,
        source=rel,
        files=[path],
        shape=shape,
        spacing=spacing,
        properties=properties,
    )


def _file_id(rel: str) -> str:
    """The id of a file: its relative path without a scan suffix (``.nii.gz``, ``.png``) or, for
    any other file, without its last suffix (``study/seg.dcm`` -> ``study_seg``)."""
    stem = _strip_suffix(rel)
    if stem == rel:
        stem = re.sub(r"\.[A-Za-z0-9]+$", "", rel)
    return safe_scan_id(stem)


def _common_folder(paths: list[Path], root: Path) -> str:
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    rel = common.relative_to(root).as_posix()
    return "" if rel == "." else rel


def study_id(study_uid: str) -> str:
    """``study_<hash>``: groups the series of one study in reports without the UID itself."""
    return f"study_{series_hash(study_uid)}" if study_uid else ""


def _dicom_scan(
    headers: list[SliceHeader], root: Path, selection: SeriesSelection | None
) -> Scan | SkippedFile:
    folder = _common_folder([h.path for h in headers], root)
    uid = headers[0].series_uid
    sid = safe_scan_id(f"{folder}_{series_hash(uid)}" if folder else f"dicom_{series_hash(uid)}")
    headers, dropped = drop_duplicate_instances(headers)
    name = f"DICOM series {sid} ({len(headers)} files in {folder or '.'})"
    study = study_id(headers[0].study_uid)
    ordered = order_series(headers)
    try:
        geometry = check_series(ordered, name)
    except DicomSeriesError as exc:
        # a series that a header rule rejects is "not selected", whatever its geometry
        props = series_properties(ordered)
        decision = selection.decide(props, unknown=("slice_spacing",)) if selection else ""
        if decision.startswith("not selected"):
            return SkippedFile(folder or ".", decision, SkipKind.NOT_SELECTED, sid, "dicom", study, decision)
        return SkippedFile(folder or ".", str(exc), SkipKind.BROKEN_SERIES, sid, "dicom", study)
    warning = ""
    if dropped:
        names = ", ".join(p.name for p in dropped[:3]) + (", ..." if len(dropped) > 3 else "")
        warning = f"{len(dropped)} duplicate file(s) of the same image (same SOPInstanceUID) ignored: {names}"
    return Scan(
        scan_id=sid,
        kind="dicom",
        source=folder or ".",
        files=[h.path for h in ordered],
        series_uid=uid,
        shape=geometry.shape,
        spacing=geometry.spacing,
        study_id=study,
        properties=series_properties(ordered, geometry),
        warning=warning,
    )


# The report's ``kind`` of a skipped file, by its skip kind (NIfTI and image files by their name).
_INPUT_KIND = {
    SkipKind.NON_IMAGE_OBJECT: "skipped-object",
    SkipKind.DICOMDIR: "skipped-object",
    SkipKind.NO_PIXEL_DATA: "skipped-object",
    SkipKind.NO_SERIES_UID: "dicom",
    SkipKind.UNREADABLE_DICOM: "dicom",
    SkipKind.BROKEN_SERIES: "dicom",
    SkipKind.UNREADABLE_NIFTI: "nifti",
    SkipKind.TRUNCATED_NIFTI: "nifti",
    SkipKind.NOT_2D_OR_3D: "nifti",
    SkipKind.UNREADABLE_IMAGE: "image",
}


def discover_scans(root: str | Path, selection: SeriesSelection | None = None) -> ScanDiscovery:
    """Find every NIfTI file, DICOM series and PNG/TIFF image under ``root`` (recursively).

    Files that are not scans (no DICOM preamble, no pixel data, DICOMDIR, SEG/RTSTRUCT/SR objects,
    unreadable or 4D NIfTI, hidden files) and broken DICOM series are listed in ``skipped``
    with a reason instead of raising. With ``selection``, scans failing a rule are listed in
    ``skipped`` as ``NOT_SELECTED`` (the scan itself in ``SkippedFile.scan``); every scan in
    ``scans`` has ``selection == "selected"``.

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
        found = _dicom_scan(headers, root, selection)
        (result.scans if isinstance(found, Scan) else result.skipped).append(found)  # type: ignore[arg-type]
    # Make ids unique (e.g. case.nii next to case.nii.gz) with a numbered suffix; scans first, so
    # a scan keeps its id whatever else lies beside it.
    seen: dict[str, int] = {}
    for scan in sorted(result.scans, key=lambda s: (s.scan_id, s.source)):
        n = seen.get(scan.scan_id, 0)
        seen[scan.scan_id] = n + 1
        if n:
            scan.scan_id = f"{scan.scan_id}-{n + 1}"
    taken = {s.scan_id for s in result.scans}
    # files that are no scan at all (no report row) come last, so they never push a row's id to "-2"
    def order(s: SkippedFile) -> tuple:
        scan_file = is_nifti(s.path) or is_plain_image(s.path)
        no_row = s.kind in (SkipKind.HIDDEN, SkipKind.NOT_DICOM) and not scan_file
        return (no_row, s.scan_id or _file_id(s.path), s.path)

    for item in sorted(result.skipped, key=order):
        base = item.scan_id or _file_id(item.path)
        item.input_kind = item.input_kind or _skipped_input_kind(item)
        sid, n = base, 1
        while sid in taken:
            n += 1
            sid = f"{base}-{n}"
        taken.add(sid)
        item.scan_id = sid
    if selection is not None:
        _apply_selection(result, selection)
    result.scans.sort(key=lambda s: s.scan_id)
    result.skipped.sort(key=lambda s: s.path)
    return result


def _skipped_input_kind(item: SkippedFile) -> str:
    if is_nifti(item.path):
        return "nifti"
    if is_plain_image(item.path):
        return "image"
    return _INPUT_KIND.get(item.kind, "other")


def _apply_selection(result: ScanDiscovery, selection: SeriesSelection) -> None:
    """Decide every scan; move those failing a rule to ``skipped`` as NOT_SELECTED."""
    kept = []
    for scan in result.scans:
        scan.selection = selection.decide(scan.properties)
        if scan.selection == "selected":
            kept.append(scan)
            continue
        result.skipped.append(
            SkippedFile(
                scan.source, scan.selection, SkipKind.NOT_SELECTED, scan.scan_id, scan.kind, scan.study_id,
                scan.selection, scan,
            )
        )
    result.scans = kept
