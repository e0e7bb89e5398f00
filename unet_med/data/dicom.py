"""DICOM series: header reading, grouping by SeriesInstanceUID, slice ordering, consistency checks, writing.

Headers are read with pydicom (pixel data deferred), so grouping and ordering a series costs a few
milliseconds per file. Slices are ordered by their position along the slice normal
(``ImagePositionPatient`` projected on ``row x column`` of ``ImageOrientationPatient``), never by
file name or ``InstanceNumber``, which scanners and anonymisers do not keep in order.

Positions and spacings are in millimetres in the DICOM patient coordinate system (LPS).
Patient-identifying tags are never read into the structures below.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unet_med.atomic_files import atomic_output

__all__ = [
    "NON_IMAGE_MODALITIES",
    "DicomSeriesError",
    "SliceHeader",
    "read_slice_header",
    "order_series",
    "check_series",
    "series_hash",
    "write_dicom_series",
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


class NotAnImageFile(ValueError):
    """A file that is not a DICOM image slice; the message is the skip reason."""


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
        raise NotAnImageFile("DICOMDIR index file, not an image")
    try:
        # defer_size keeps PixelData unread; its presence is still visible.
        ds = pydicom.dcmread(path, defer_size=256)
    except InvalidDicomError:
        raise NotAnImageFile("not a DICOM file (no 'DICM' preamble)") from None
    except Exception as exc:  # truncated or corrupt headers raise many different errors
        raise NotAnImageFile(f"unreadable DICOM header: {type(exc).__name__}: {exc}") from None
    sop_class = str(getattr(ds.file_meta, "MediaStorageSOPClassUID", "") or ds.get("SOPClassUID", ""))
    if sop_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
        raise NotAnImageFile("DICOMDIR index file, not an image")
    modality = str(ds.get("Modality", "")).upper()
    if modality in NON_IMAGE_MODALITIES:
        raise NotAnImageFile(f"non-image DICOM object (Modality {modality})")
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise NotAnImageFile(f"DICOM file without pixel data (Modality {modality or 'unknown'})")
    uid = ds.get("SeriesInstanceUID")
    if not uid:
        raise NotAnImageFile("DICOM image without SeriesInstanceUID")

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


def _lps_geometry(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Origin, unit direction columns and spacing (mm) in LPS from a RAS voxel-to-world affine."""
    affine = np.asarray(affine, dtype=float)
    n = affine.shape[0] - 1
    ras_to_lps = np.diag([-1.0, -1.0] + [1.0] * (n - 2) + [1.0])
    lps = ras_to_lps @ affine
    m = lps[:n, :n]
    spacing = np.linalg.norm(m, axis=0)
    return lps[:n, n], m / spacing, spacing


def write_dicom_series(
    volume: np.ndarray,
    affine: np.ndarray,
    out_dir: str | Path,
    *,
    series_uid: str | None = None,
    study_uid: str | None = None,
    modality: str = "CT",
    subject: str = "ANON",
    series_description: str = "unet-med",
    file_names: Sequence[str] | None = None,
) -> list[Path]:
    """Write a 3D int16 volume as a classic single-frame DICOM series (one file per slice along axis 2).

    Args:
        volume: array indexed (i, j, k) = (column, row, slice), values stored as int16 (HU for CT).
        affine: 4x4 RAS voxel-to-world affine in mm (the NIfTI convention); the series gets the
            same world geometry (ImagePositionPatient/ImageOrientationPatient in LPS).
        out_dir: folder to write into (created).
        series_uid, study_uid: UIDs (generated when None).
        subject: value for PatientName/PatientID (synthetic data only).
        file_names: names per slice (default ``slice_0000.dcm`` ...); tests use shuffled names.

    Returns:
        The written paths, in slice order.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    volume = np.asarray(volume)
    if volume.ndim == 2:
        volume = volume[:, :, None]
    if volume.ndim != 3:
        raise ValueError(f"write_dicom_series expects a 2D or 3D volume, got shape {volume.shape}")
    affine = np.asarray(affine, dtype=float)
    if affine.shape == (3, 3):  # 2D affine: embed in 3D with unit slice spacing
        a3 = np.eye(4)
        a3[:2, :2], a3[:2, 3] = affine[:2, :2], affine[:2, 2]
        affine = a3
    origin, direction, spacing = _lps_geometry(affine)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid(entropy_srcs=[series_uid, "frame"])
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    data = np.clip(np.rint(volume), -32768, 32767).astype(np.int16)
    n = data.shape[2]
    names = list(file_names) if file_names is not None else [f"slice_{k:04d}.dcm" for k in range(n)]
    if len(names) != n:
        raise ValueError(f"file_names has {len(names)} names for {n} slices")
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[series_uid, str(k)])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.PatientName = f"{subject}^Synthetic"  # family^given, as DICOM person names are
        ds.PatientID = subject
        ds.SeriesDescription = series_description
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        pos = origin + k * spacing[2] * direction[:, 2]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in pos]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1])]
        ds.PixelSpacing = [
            f"{spacing[1]:.6f}",
            f"{spacing[0]:.6f}",
        ]  # row spacing (along j), column (along i)
        ds.SliceThickness = f"{spacing[2]:.6f}"
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.PixelData = np.ascontiguousarray(data[:, :, k].T).tobytes()
        path = out_dir / names[k]
        with atomic_output(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths
