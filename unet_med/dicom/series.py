"""DICOM series: header reading, grouping by SeriesInstanceUID, slice ordering, consistency checks.

Headers are read with pydicom (pixel data deferred), so grouping and ordering a series costs a few
milliseconds per file. Slices are ordered by their position along the slice normal
(``ImagePositionPatient`` projected on ``row x column`` of ``ImageOrientationPatient``), never by
file name or ``InstanceNumber``, which scanners and anonymisers do not keep in order.

Positions and spacings are in millimetres in the DICOM patient coordinate system (LPS).
Patient-identifying tags are never read into the structures below.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "NON_IMAGE_MODALITIES",
    "DicomSeriesError",
    "NotAnImageFile",
    "NotAnImageKind",
    "SeriesGeometry",
    "SliceHeader",
    "check_series",
    "order_series",
    "read_slice_header",
    "series_files",
    "series_hash",
]

# Series that hold no image volume: segmentations, structure sets, reports, presentation states...
NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "SR", "RTPLAN", "RTDOSE", "RTRECORD", "PR", "KO", "REG"})
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# Relative tolerance on slice spacing before a series counts as irregular.
SPACING_TOLERANCE = 0.01


class DicomSeriesError(ValueError):
    """A DICOM series that cannot become one regular volume (missing slices, mixed sizes, ...)."""


@dataclass(frozen=True)
class SliceHeader:
    """What grouping and ordering need from one DICOM file (no patient tags).

    Attributes:
        path: the file.
        series_uid: SeriesInstanceUID.
        modality: e.g. ``CT``, ``MR``.
        rows, columns: pixel matrix size.
        position: ImagePositionPatient in mm (LPS), or None.
        orientation: ImageOrientationPatient (row cosine, column cosine), or None.
        pixel_spacing: (row spacing, column spacing) in mm, or None.
        frames: NumberOfFrames (1 for classic single-frame files).
    """

    path: Path
    series_uid: str
    modality: str
    rows: int
    columns: int
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float] | None
    frames: int = 1

    @property
    def normal(self) -> np.ndarray | None:
        if self.orientation is None:
            return None
        row, col = np.asarray(self.orientation[:3]), np.asarray(self.orientation[3:])
        return np.cross(row, col)


class NotAnImageKind(enum.Enum):
    """Why a file is not a DICOM image slice (what :class:`NotAnImageFile` carries as ``kind``)."""

    NOT_DICOM = "not_dicom"  # no 'DICM' preamble: any other file
    DICOMDIR = "dicomdir"  # the index file of a DICOM medium
    NON_IMAGE_OBJECT = "non_image_object"  # SEG, RTSTRUCT, SR, ... (NON_IMAGE_MODALITIES)
    NO_PIXEL_DATA = "no_pixel_data"  # an image modality without PixelData/FloatPixelData
    NO_SERIES_UID = "no_series_uid"  # an image that cannot be grouped into a series
    UNREADABLE_HEADER = "unreadable_header"  # truncated or corrupt header


class NotAnImageFile(ValueError):
    """A file that is not a DICOM image slice; the message is the reason for humans, ``kind`` the
    reason for code."""

    def __init__(self, kind: NotAnImageKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def read_slice_header(path: str | Path) -> SliceHeader:
    """Read the geometry tags of one DICOM file.

    Raises:
        NotAnImageFile: with the reason why the file is not an image slice (no DICOM preamble,
            DICOMDIR, non-image modality such as SEG/RTSTRUCT/SR, no pixel data).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if path.name.upper() == "DICOMDIR":
        raise NotAnImageFile(NotAnImageKind.DICOMDIR, "DICOMDIR index file, not an image")
    try:
        # defer_size keeps PixelData unread; its presence is still visible.
        ds = pydicom.dcmread(path, defer_size=256)
    except InvalidDicomError:
        raise NotAnImageFile(NotAnImageKind.NOT_DICOM, "not a DICOM file (no 'DICM' preamble)") from None
    except Exception as exc:  # truncated or corrupt headers raise many different errors
        raise NotAnImageFile(
            NotAnImageKind.UNREADABLE_HEADER, f"unreadable DICOM header: {type(exc).__name__}: {exc}"
        ) from None
    sop_class = str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    if sop_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise NotAnImageFile(NotAnImageKind.DICOMDIR, "DICOMDIR index file, not an image")
    modality = str(ds.get("Modality", "")).upper()
    if modality in NON_IMAGE_MODALITIES:
        raise NotAnImageFile(NotAnImageKind.NON_IMAGE_OBJECT, f"non-image DICOM object (Modality {modality})")
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise NotAnImageFile(
            NotAnImageKind.NO_PIXEL_DATA, f"DICOM file without pixel data (Modality {modality or 'unknown'})"
        )
    uid = ds.get("SeriesInstanceUID")
    if not uid:
        raise NotAnImageFile(NotAnImageKind.NO_SERIES_UID, "DICOM image without SeriesInstanceUID")

    def floats(name: str) -> tuple[float, ...] | None:
        value = ds.get(name)
        if value is None or len(value) == 0:
            return None
        return tuple(float(v) for v in value)

    return SliceHeader(
        path=path,
        series_uid=str(uid),
        modality=modality,
        rows=int(ds.get("Rows", 0)),
        columns=int(ds.get("Columns", 0)),
        position=floats("ImagePositionPatient"),  # type: ignore[arg-type]
        orientation=floats("ImageOrientationPatient"),
        pixel_spacing=floats("PixelSpacing"),  # type: ignore[arg-type]
        frames=int(ds.get("NumberOfFrames", 1) or 1),
    )


def series_hash(series_uid: str, length: int = 8) -> str:
    """Short stable hash of a SeriesInstanceUID (used in scan ids instead of any DICOM tag)."""
    return hashlib.sha1(series_uid.encode()).hexdigest()[:length]


def order_series(headers: Sequence[SliceHeader]) -> list[SliceHeader]:
    """Slices sorted by position along the slice normal (ascending).

    Falls back to the given order for single slices and slices without geometry tags.
    """
    headers = list(headers)
    if len(headers) < 2 or any(h.position is None or h.orientation is None for h in headers):
        return headers
    normal = headers[0].normal
    return sorted(headers, key=lambda h: float(np.dot(normal, h.position)))  # type: ignore[arg-type]


@dataclass
class SeriesGeometry:
    """Geometry of an ordered, checked series: shape (columns, rows, slices) and spacing in mm."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    notes: list[str] = field(default_factory=list)


def check_series(ordered: Sequence[SliceHeader], name: str = "series") -> SeriesGeometry:
    """Check that ordered slices form one regular volume; return its shape and spacing.

    Raises:
        DicomSeriesError: naming ``name`` and the problem: mixed image sizes, mixed orientations,
            duplicate positions, missing slices (a gap of about a multiple of the usual spacing),
            or otherwise inconsistent slice spacing.
    """
    if not ordered:
        raise DicomSeriesError(f"{name}: no image slices")
    first = ordered[0]
    sizes = {(h.rows, h.columns) for h in ordered}
    if len(sizes) > 1:
        odd = next(h for h in ordered if (h.rows, h.columns) != (first.rows, first.columns))
        raise DicomSeriesError(
            f"{name}: mixed image sizes within the series: {first.path.name} is "
            f"{first.rows}x{first.columns} (rows x columns) but {odd.path.name} is {odd.rows}x{odd.columns}"
        )
    spacing_xy = first.pixel_spacing or (1.0, 1.0)
    if len(ordered) == 1:
        shape = (
            (first.columns, first.rows) if first.frames == 1 else (first.columns, first.rows, first.frames)
        )
        return SeriesGeometry(shape=shape, spacing=(spacing_xy[1], spacing_xy[0], 1.0)[: len(shape)])
    if any(h.frames > 1 for h in ordered):
        raise DicomSeriesError(f"{name}: several multi-frame files in one series are not supported")
    if any(h.position is None or h.orientation is None for h in ordered):
        missing = next(h for h in ordered if h.position is None or h.orientation is None)
        raise DicomSeriesError(
            f"{name}: {missing.path.name} lacks ImagePositionPatient/ImageOrientationPatient, "
            "so slices cannot be ordered"
        )
    for h in ordered[1:]:
        if not np.allclose(h.orientation, first.orientation, atol=1e-3):  # type: ignore[arg-type]
            raise DicomSeriesError(
                f"{name}: mixed slice orientations: {first.path.name} has {first.orientation}, "
                f"{h.path.name} has {h.orientation}"
            )
    normal = first.normal
    pos = np.array([float(np.dot(normal, h.position)) for h in ordered])  # type: ignore[arg-type]
    gaps = np.diff(pos)
    dup = np.flatnonzero(gaps < 1e-3)
    if dup.size:
        i = int(dup[0])
        raise DicomSeriesError(
            f"{name}: {ordered[i].path.name} and {ordered[i + 1].path.name} lie at the same position "
            f"{pos[i]:.3f} mm along the slice normal (duplicate slice or several acquisitions in one series)"
        )
    step = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - step) > SPACING_TOLERANCE * step + 1e-3)
    if bad.size:
        i = int(bad[0])
        ratio = gaps[i] / step
        if abs(ratio - round(ratio)) < 0.1 and round(ratio) >= 2:
            raise DicomSeriesError(
                f"{name}: missing slice(s): gap of {gaps[i]:.3f} mm between {ordered[i].path.name} and "
                f"{ordered[i + 1].path.name} where the series spacing is {step:.3f} mm "
                f"(about {round(ratio) - 1} slice(s) missing)"
            )
        raise DicomSeriesError(
            f"{name}: inconsistent slice spacing: {gaps[i]:.3f} mm between {ordered[i].path.name} and "
            f"{ordered[i + 1].path.name}, {step:.3f} mm elsewhere"
        )
    return SeriesGeometry(
        shape=(first.columns, first.rows, len(ordered)), spacing=(spacing_xy[1], spacing_xy[0], step)
    )


def series_files(paths: Sequence[str | Path], name: str | None = None) -> list[Path]:
    """Files of exactly one DICOM image series, ordered along the slice normal and checked.

    ``paths`` may be a folder (searched recursively) or a list of files.

    Raises:
        DicomSeriesError: a missing file, no DICOM images, several series, or an irregular series
            (missing slices, inconsistent spacing, mixed sizes), naming ``name`` (default: the
            first path).
    """
    name = name or str(paths[0])
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file()))
        elif p.exists():
            files.append(p)
        else:
            raise DicomSeriesError(f"{name}: file not found: {p}")
    headers, reasons = [], []
    for f in files:
        try:
            headers.append(read_slice_header(f))
        except NotAnImageFile as exc:
            reasons.append(f"{f.name}: {exc}")
    if not headers:
        detail = f" ({'; '.join(reasons[:3])})" if reasons else " (empty)"
        raise DicomSeriesError(f"{name}: no DICOM image files{detail}")
    uids = sorted({h.series_uid for h in headers})
    if len(uids) > 1:
        raise DicomSeriesError(
            f"{name}: holds {len(uids)} DICOM series; pass the files of one series "
            "(`unet-med scans` lists them separately)"
        )
    ordered = order_series(headers)
    check_series(ordered, name)
    return [h.path for h in ordered]
