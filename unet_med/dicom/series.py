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
    "drop_duplicate_instances",
    "non_image_sop_class",
    "series_properties",
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
# SOP Classes that hold no image volume, by exact UID or by UID prefix (families of classes).
_NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data",
    "1.2.840.10008.5.1.4.1.1.66.1": "Spatial Registration",
    "1.2.840.10008.5.1.4.1.1.66.3": "Deformable Spatial Registration",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.66.5": "Surface Segmentation",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set",
    "1.2.840.10008.5.1.4.1.1.481.4": "RT Beams Treatment Record",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan",
    "1.2.840.10008.5.1.4.1.1.481.8": "RT Ion Plan",
}
_NON_IMAGE_SOP_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.88.": "Structured Report",
    "1.2.840.10008.5.1.4.1.1.11.": "Presentation State",
    "1.2.840.10008.5.1.4.1.1.9.": "Waveform",
    "1.2.840.10008.5.1.4.1.1.104.": "Encapsulated Document",
}
# Relative tolerance on slice spacing before a series counts as irregular.
SPACING_TOLERANCE = 0.01
# A gap between neighbouring slices above this multiple of the median spacing is a missing slice.
MISSING_SLICE_GAP = 1.5
# Slice positions drifting sideways by more than this many pixels over a series: gantry tilt.
GANTRY_TILT_PIXELS = 0.5


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
        sop_instance_uid: SOPInstanceUID (two files with the same one are one image twice).
        study_uid: StudyInstanceUID (grouping in reports; reports show a hash of it).
        attributes: the values of :data:`unet_med.dicom.selection.DICOM_ATTRIBUTES` present in
            the file (what selection rules read; no patient tags): numbers, texts or tuples.
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
    sop_instance_uid: str = ""
    study_uid: str = ""
    attributes: dict = field(default_factory=dict, compare=False)

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


def non_image_sop_class(sop_class: str) -> str | None:
    """The name of a SOP Class that holds no image volume (SEG, RTSTRUCT, RTDOSE, RTPLAN, SR,
    presentation states, waveforms, encapsulated documents, registrations), else None."""
    if sop_class in _NON_IMAGE_SOP_CLASSES:
        return _NON_IMAGE_SOP_CLASSES[sop_class]
    families = _NON_IMAGE_SOP_PREFIXES.items()
    return next((name for prefix, name in families if sop_class.startswith(prefix)), None)


def _starts_like_a_dataset(path: Path) -> bool:
    """Whether a file without the 'DICM' preamble begins with a DICOM element of group 0002 or
    0008 (little or big endian): how DICOM readers (DCMTK, GDCM) recognise a dataset written
    without the 128-byte preamble. Checked before pydicom's ``force=True``, which would otherwise
    "parse" any text or binary file into nonsense elements."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    if len(head) < 4:
        return False
    return int.from_bytes(head[:2], "little") in (2, 8) or int.from_bytes(head[:2], "big") in (2, 8)


def _selection_attributes(ds) -> dict:
    from unet_med.dicom.selection import DICOM_ATTRIBUTES

    found: dict = {}
    for keyword, kind in DICOM_ATTRIBUTES.items():
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        many = list(value) if not isinstance(value, (str, bytes)) and hasattr(value, "__len__") else [value]
        try:
            items = tuple(float(v) if kind == "number" else str(v).strip() for v in many)
        except (TypeError, ValueError):
            continue
        found[keyword] = items if len(items) > 1 else items[0] if items else None
    return found


def read_slice_header(path: str | Path) -> SliceHeader:
    """Read the geometry tags of one DICOM file.

    A file without the 128-byte preamble and 'DICM' marker (written by some RT planning systems
    and old archives) is read with pydicom's ``force=True`` when it starts like a dataset, and is
    classified by its SOP Class like any other.

    Raises:
        NotAnImageFile: with the reason why the file is not an image slice (no DICOM preamble,
            DICOMDIR, non-image SOP Class or modality such as SEG/RTSTRUCT/SR, no pixel data).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if path.name.upper() == "DICOMDIR":
        raise NotAnImageFile(NotAnImageKind.DICOMDIR, "DICOMDIR index file, not an image")
    try:
        # defer_size keeps PixelData unread; its presence is still visible.
        try:
            ds = pydicom.dcmread(path, defer_size=256)
        except InvalidDicomError:
            if not _starts_like_a_dataset(path):
                raise
            ds = pydicom.dcmread(path, defer_size=256, force=True)
            if "SOPClassUID" not in ds and "Modality" not in ds:
                raise InvalidDicomError("no SOP Class") from None
    except InvalidDicomError:
        raise NotAnImageFile(NotAnImageKind.NOT_DICOM, "not a DICOM file (no 'DICM' preamble)") from None
    except Exception as exc:  # truncated or corrupt headers raise many different errors
        raise NotAnImageFile(
            NotAnImageKind.UNREADABLE_HEADER, f"unreadable DICOM header: {type(exc).__name__}: {exc}"
        ) from None
    file_meta = getattr(ds, "file_meta", None)
    sop_class = str(getattr(file_meta, "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    if sop_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise NotAnImageFile(NotAnImageKind.DICOMDIR, "DICOMDIR index file, not an image")
    modality = str(ds.get("Modality", "")).upper()
    sop_name = non_image_sop_class(sop_class)
    if modality in NON_IMAGE_MODALITIES or sop_name is not None:
        what = ", ".join(x for x in (sop_name, f"Modality {modality}" if modality else "") if x)
        raise NotAnImageFile(
            NotAnImageKind.NON_IMAGE_OBJECT, f"non-image DICOM object, not an image series ({what})"
        )
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
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        attributes=_selection_attributes(ds),
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
            two different images at one position (several acquisitions in one series; the same
            instance twice is removed before, :func:`drop_duplicate_instances`), gantry tilt
            (positions drifting sideways by more than half a pixel), missing slices (a gap over
            1.5x the median spacing), or otherwise inconsistent slice spacing (over 1%).
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
    positions = np.array([h.position for h in ordered], dtype=float)
    pos = positions @ normal
    gaps = np.diff(pos)
    dup = np.flatnonzero(gaps < 1e-3)
    if dup.size:
        i = int(dup[0])
        raise DicomSeriesError(
            f"{name}: {ordered[i].path.name} and {ordered[i + 1].path.name} are two different images at the "
            f"same position {pos[i]:.3f} mm along the slice normal: several acquisitions (echoes, phases, "
            "repeats) in one series; viewers show them as separate stacks, so export each acquisition as "
            "its own series"
        )
    # Gantry tilt: slices stacked along a direction that is not their normal (a sheared volume).
    along = float(pos[-1] - pos[0])
    drift = float(np.linalg.norm((positions[-1] - positions[0]) - along * normal))
    if drift > GANTRY_TILT_PIXELS * min(spacing_xy):
        angle = np.degrees(np.arctan2(drift, along))
        raise DicomSeriesError(
            f"{name}: gantry tilt of {angle:.1f} degrees: the slice positions shift {drift:.2f} mm sideways "
            "over the series, so the slices are not stacked along their normal; resample it onto an "
            "orthogonal grid first (dcm2niix corrects gantry tilt by default) or use a reconstruction "
            "without tilt"
        )
    step = float(np.median(gaps))
    gap = np.flatnonzero(gaps > MISSING_SLICE_GAP * step)
    if gap.size:
        i = int(gap[0])
        missing = max(1, round(gaps[i] / step) - 1)
        raise DicomSeriesError(
            f"{name}: missing slice(s): gap of {gaps[i]:.3f} mm between {ordered[i].path.name} and "
            f"{ordered[i + 1].path.name} where the series spacing is {step:.3f} mm "
            f"(about {missing} slice(s) missing)"
        )
    bad = np.flatnonzero(np.abs(gaps - step) > SPACING_TOLERANCE * step + 1e-3)
    if bad.size:
        i = int(bad[0])
        raise DicomSeriesError(
            f"{name}: inconsistent slice spacing: {gaps[i]:.3f} mm between {ordered[i].path.name} and "
            f"{ordered[i + 1].path.name}, {step:.3f} mm elsewhere"
        )
    return SeriesGeometry(
        shape=(first.columns, first.rows, len(ordered)), spacing=(spacing_xy[1], spacing_xy[0], step)
    )


def drop_duplicate_instances(headers: Sequence[SliceHeader]) -> tuple[list[SliceHeader], list[Path]]:
    """Keep one file per SOPInstanceUID (the first by path): the same image stored twice (a
    re-sent or re-exported file) is one image, as a PACS stores it. Returns (kept headers, dropped
    files). Files without a SOPInstanceUID are all kept."""
    kept, dropped, seen = [], [], set()
    for h in sorted(headers, key=lambda h: str(h.path)):
        if h.sop_instance_uid and h.sop_instance_uid in seen:
            dropped.append(h.path)
            continue
        seen.add(h.sop_instance_uid)
        kept.append(h)
    return kept, dropped


def series_properties(ordered: Sequence[SliceHeader], geometry: SeriesGeometry | None = None) -> dict:
    """What selection rules (:mod:`unet_med.dicom.selection`) read of a series: ``kind``,
    ``slices``, ``orientation`` (``mixed`` when slices disagree), ``pixel_spacing`` (mm),
    ``slice_spacing`` (mm, only with a checked ``geometry``) and the DICOM attributes of the first
    slice (``ImageType``: every value found on any slice)."""
    from unet_med.dicom.selection import plane_of_normal

    first = ordered[0]
    props: dict = {k: None for k in _selection_keys()}
    props.update(first.attributes)
    image_types: list[str] = []
    for h in ordered:
        value = h.attributes.get("ImageType")
        for v in (value if isinstance(value, tuple) else () if value is None else (value,)):
            if v not in image_types:
                image_types.append(v)
    props["ImageType"] = tuple(image_types) or None
    planes = {plane_of_normal(h.normal) for h in ordered}
    props.update(
        kind="dicom",
        slices=first.frames if len(ordered) == 1 else len(ordered),
        orientation="mixed" if len(planes) > 1 else planes.pop(),
        pixel_spacing=first.pixel_spacing,
    )
    if geometry is not None and len(geometry.spacing) > 2:
        props["slice_spacing"] = float(geometry.spacing[2])
    return props


def _selection_keys() -> list[str]:
    from unet_med.dicom.selection import DICOM_ATTRIBUTES

    return list(DICOM_ATTRIBUTES)


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
    headers, _ = drop_duplicate_instances(headers)
    ordered = order_series(headers)
    check_series(ordered, name)
    return [h.path for h in ordered]
