"""RT Structure Sets (RTSTRUCT) for label maps predicted on DICOM series, and reading them back.

Radiotherapy planning systems import structures as RTSTRUCT, not as DICOM SEG: one ROI per
foreground label (its ROI Number is the label value, its name the bundle's class name, its colour
the label's colour in the QC picture), each a set of closed planar contours, one or more per image
slice, in patient coordinates (LPS, mm), each contour referencing the SOP Instance of its slice.
The structure set references the series through the Frame of Reference, the study and the series
(Referenced Frame of Reference > RT Referenced Study > RT Referenced Series > Contour Image), and
carries the patient and study attributes of the source series, as the DICOM SEG does.

Why not a library: highdicom (installed, 0.28) has no RT Structure Set support. ``rt-utils`` (PyPI,
1.2.7) builds the pixel-to-patient matrix with the two PixelSpacing values swapped
(``row_direction * row_spacing``, where stepping along a row moves by the *column* spacing;
qurit/rt-utils#92, open), so every series with non-square pixels gets misplaced contours; it also
reads every file of a folder with its pixel data, depends on ``opencv-python`` (which needs libGL)
and sets dataset encodings that pydicom 3 deprecates. So the dataset is written with pydicom
directly and contours are traced with scikit-image's marching squares
(:func:`skimage.measure.find_contours` at level 0.5 on the zero-padded slice mask): every contour
vertex lies halfway between a foreground and a background pixel centre, so filling the contours
again (pixel centres inside, even-odd rule for holes) gives back the same mask. Vertices in the
middle of straight runs are dropped (exactly, so the polygon stays the same).

The file is written Implicit VR Little Endian, as planning systems write RTSTRUCTs: explicit VR
gives DS values a 2-byte length, and the Contour Data of one large, irregular contour exceeds
64 kB (pydicom would then store it as UN, which importers cannot read).

Holes (a label around another, e.g. an organ around its lesion) are written as separate contours
nested inside the outer one, all CLOSED_PLANAR; readers combine the contours of a slice with the
even-odd rule, as planning systems do on import (no "keyhole" cuts, no CLOSED_PLANAR_XOR, which
older systems do not know). Contours sit on the marching-squares line, half a pixel outside the
outer pixel centres; readers that fill every pixel a contour touches (rt-utils rounds vertices and
fills edges) get a mask up to one pixel larger all round.

Geometry uses each slice's own ImagePositionPatient and the series' ImageOrientationPatient and
PixelSpacing (row spacing, column spacing), so oblique, flipped and non-square-pixel series are
placed exactly: pixel (row r, column c) of slice k lies at
``IPP_k + c * column_spacing * row_cosine + r * row_spacing * column_cosine``.
"""

from __future__ import annotations

import colorsys
import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from unet_med.atomic_files import atomic_output

__all__ = [
    "RTSTRUCT_SOP_CLASS_UID",
    "fill_contours",
    "read_rtstruct_masks",
    "roi_colours",
    "trace_slice_contours",
    "write_rtstruct",
]

RTSTRUCT_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.481.3"
# What RT Referenced Study Sequence items name as their SOP Class (the retired Detached Study
# Management SOP Class): the value planning systems expect there.
_STUDY_COMPONENT_SOP_CLASS_UID = "1.2.840.10008.3.1.2.3.1"
# Patient and General Study attributes (type 2: present, perhaps empty) copied from the source.
_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)  # fmt: skip
# matplotlib's tab10, the colours of the QC picture's outlines (label v -> tab10[(v - 1) % 10]).
_TAB10 = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)  # fmt: skip


def roi_colours(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct RGB display colours (0..255): the QC picture's tab10 colours for the
    first ten ROIs, then hues spaced by the golden angle."""
    colours = list(_TAB10[:count])
    for n in range(len(colours), count):
        r, g, b = colorsys.hsv_to_rgb((n * 0.618033988749895) % 1.0, 0.75, 0.9)
        colours.append((round(255 * r), round(255 * g), round(255 * b)))
    return colours


def trace_slice_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a 2D boolean mask indexed (row, column), in pixel units.

    Returns:
        One (n, 2) array of (row, column) vertices per contour, the closing vertex not repeated;
        outer boundaries and hole boundaries alike (filling with the even-odd rule gives back
        ``mask``).
    """
    from skimage.measure import find_contours

    padded = np.pad(np.asarray(mask, dtype=bool), 1).astype(np.float32)  # closes contours at the border
    contours = []
    for contour in find_contours(padded, 0.5):
        contour = contour[:-1] - 1.0  # closed: the last vertex repeats the first
        # marching-squares vertices lie on a half-pixel grid, so "straight" is an exact test
        incoming = contour - np.roll(contour, 1, axis=0)
        outgoing = np.roll(contour, -1, axis=0) - contour
        turns = np.abs(incoming[:, 0] * outgoing[:, 1] - incoming[:, 1] * outgoing[:, 0]) > 1e-6
        if turns.sum() >= 3:
            contours.append(contour[turns])
    return contours


def fill_contours(contours: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Fill closed contours on a pixel grid with the even-odd rule: a pixel is inside when its
    centre lies inside an odd number of ``contours`` (so a contour inside another is a hole).

    Args:
        contours: (n, 2) arrays of (row, column) vertices in pixel units, closure implied.
        shape: (rows, columns) of the grid.

    Returns:
        A boolean mask of ``shape``.

    A scanline fill written here because :func:`skimage.draw.polygon` costs bounding box x
    vertices per contour (26 s for the contours of a 512 x 512 x 120 CT): each edge crosses the
    rows whose centre line it spans (half-open, so a vertex on a centre line counts once), and
    every crossing toggles the pixels to its right.
    """
    rows, cols = shape
    toggles = np.zeros((rows, cols + 1), dtype=np.int32)
    for contour in contours:
        start = np.asarray(contour, dtype=float)
        end = np.roll(start, -1, axis=0)
        sloped = start[:, 0] != end[:, 0]
        (y0, x0), (y1, x1) = start[sloped].T, end[sloped].T
        first = np.clip(np.ceil(np.minimum(y0, y1)), 0, rows).astype(int)  # rows r: min <= r < max
        stop = np.clip(np.ceil(np.maximum(y0, y1)), 0, rows).astype(int)
        counts = np.maximum(stop - first, 0)
        if not counts.any():
            continue
        edge = np.repeat(np.arange(len(first)), counts)
        r = first[edge] + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        x = x0[edge] + (r - y0[edge]) * (x1[edge] - x0[edge]) / (y1[edge] - y0[edge])
        np.add.at(toggles, (r, np.clip(np.floor(x).astype(int) + 1, 0, cols)), 1)  # columns c > x
    return (np.cumsum(toggles, axis=1)[:, :cols] % 2).astype(bool)


class _SliceGeometry:
    """The in-plane geometry of the series' slices: position per slice, row/column cosines, spacing."""

    def __init__(self, sources: Sequence, name: str) -> None:
        first = sources[0]
        for keyword in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
            missing = next((ds for ds in sources if keyword not in ds), None)
            if missing is not None:
                raise ValueError(f"{name}: a source slice lacks {keyword}; contours need the slice geometry")
        orientation = np.asarray([float(v) for v in first.ImageOrientationPatient])
        self.row_cosine, self.column_cosine = orientation[:3], orientation[3:]
        self.normal = np.cross(self.row_cosine, self.column_cosine)
        # PixelSpacing is (spacing between rows, spacing between columns)
        self.row_spacing, self.column_spacing = (float(v) for v in first.PixelSpacing)
        self.positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in sources])

    def to_patient(self, k: int, rows_columns: np.ndarray) -> np.ndarray:
        """(n, 2) (row, column) pixel coordinates of slice ``k`` -> (n, 3) LPS points in mm."""
        rows, columns = rows_columns[:, 0:1], rows_columns[:, 1:2]
        return (
            self.positions[k]
            + columns * self.column_spacing * self.row_cosine
            + rows * self.row_spacing * self.column_cosine
        )

    def to_pixels(self, k: int, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, 3) LPS points -> ((n, 2) (row, column) coordinates in slice ``k``, (n,) distance
        from the slice plane in mm)."""
        d = points - self.positions[k]
        rows = d @ self.column_cosine / self.row_spacing
        columns = d @ self.row_cosine / self.column_spacing
        return np.stack([rows, columns], axis=1), d @ self.normal


def _read_sources(source_files: Sequence[str | Path]) -> list:
    import pydicom

    return [pydicom.dcmread(str(f), stop_before_pixels=True) for f in source_files]


def write_rtstruct(
    label_map: np.ndarray,
    source_files: Sequence[str | Path],
    labels: Mapping[int, str],
    path: str | Path,
    *,
    algorithm_name: str = "unet-med",
    algorithm_version: str = "0",
) -> Path:
    """Write an RT Structure Set of ``label_map`` referencing the source series.

    Args:
        label_map: integer labels indexed (i, j, k) = (column, row, slice), the array order of
            :func:`unet_med.data.loading.load_scan`; 2D maps are one slice.
        source_files: the series' files in slice order (``k``), as the loader read them.
        labels: {label value: name}; every foreground label becomes an ROI (ROI Number = label
            value), also one with no voxels (then without contours).
        path: target file, written atomically.
        algorithm_name, algorithm_version: the ROIs' generation description, the equipment's
            model name and software version.

    Raises:
        ValueError: when the label map does not match the series (columns, rows, slice count), or
            the series lacks the Frame of Reference UID or slice geometry that contours need.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ImplicitVRLittleEndian, generate_uid

    label_map = np.asarray(label_map)
    if label_map.ndim == 2:
        label_map = label_map[:, :, None]
    sources = _read_sources(source_files)
    name = f"RTSTRUCT of the series of {Path(source_files[0]).parent}"
    first = sources[0]
    rows, cols = int(first.Rows), int(first.Columns)
    if label_map.shape != (cols, rows, len(sources)):
        raise ValueError(
            f"RTSTRUCT: label map of shape {label_map.shape} does not match the series "
            f"({cols} columns x {rows} rows x {len(sources)} slices)"
        )
    frame_uid = str(first.get("FrameOfReferenceUID", "") or "")
    if not frame_uid:
        raise ValueError(f"{name}: the series has no FrameOfReferenceUID, which an RT Structure Set needs")
    geometry = _SliceGeometry(sources, name)

    now = datetime.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    sop_instance_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS_UID
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    # SOP Common
    if "SpecificCharacterSet" in first:  # the copied names keep their encoding
        ds.SpecificCharacterSet = first.SpecificCharacterSet
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS_UID
    ds.SOPInstanceUID = sop_instance_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    # Patient and General Study: copied from the source series
    ds.StudyInstanceUID = first.StudyInstanceUID
    for keyword in _COPIED:
        setattr(ds, keyword, first.get(keyword, ""))
    # RT Series and General Equipment
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 901  # the DICOM SEG is series 900
    ds.SeriesDescription = f"{algorithm_name} structures"[:64]
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.OperatorsName = ""
    ds.Manufacturer = "unet-med"
    ds.ManufacturerModelName = algorithm_name[:64]
    ds.SoftwareVersions = algorithm_version[:64]
    ds.InstanceNumber = 1
    # Frame of Reference (a module of the IOD in current editions of the standard; dciodvfy checks it)
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    # Structure Set: what the contours lie on
    ds.StructureSetLabel = algorithm_name[:16]
    ds.StructureSetName = f"{algorithm_name} {algorithm_version}"[:64]
    ds.StructureSetDate, ds.StructureSetTime = date, time

    def image_reference(source: Dataset) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = source.SOPClassUID
        item.ReferencedSOPInstanceUID = source.SOPInstanceUID
        return item

    series_ref = Dataset()
    series_ref.SeriesInstanceUID = first.SeriesInstanceUID
    series_ref.ContourImageSequence = DicomSequence([image_reference(s) for s in sources])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = _STUDY_COMPONENT_SOP_CLASS_UID
    study_ref.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = DicomSequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = frame_uid
    frame_ref.RTReferencedStudySequence = DicomSequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame_ref])

    foreground = sorted(int(v) for v in labels if int(v) != 0)
    roi_items, contour_items, observation_items = [], [], []
    for number, (value, colour) in enumerate(zip(foreground, roi_colours(len(foreground))), start=1):
        roi = Dataset()
        roi.ROINumber = value
        roi.ReferencedFrameOfReferenceUID = frame_uid
        roi.ROIName = str(labels[value])[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = f"{algorithm_name} {algorithm_version}"[:64]
        roi_items.append(roi)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = value
        roi_contour.ROIDisplayColor = list(colour)
        contours = []
        for k in range(label_map.shape[2]):
            mask = label_map[:, :, k].T == value  # (row, column)
            if not mask.any():
                continue
            for traced in trace_slice_contours(mask):
                points = geometry.to_patient(k, traced)
                contour = Dataset()
                contour.ContourImageSequence = DicomSequence([image_reference(sources[k])])
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(points)
                contour.ContourNumber = len(contours) + 1
                contour.ContourData = [f"{v:.4f}" for v in points.ravel()]
                contours.append(contour)
        if contours:  # type 3: an ROI without voxels has no Contour Sequence
            roi_contour.ContourSequence = DicomSequence(contours)
        contour_items.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = value
        observation.RTROIInterpretedType = ""  # type 2: the bundle does not say ORGAN, GTV, ...
        observation.ROIInterpreter = ""
        observation_items.append(observation)
    ds.StructureSetROISequence = DicomSequence(roi_items)
    ds.ROIContourSequence = DicomSequence(contour_items)
    ds.RTROIObservationsSequence = DicomSequence(observation_items)

    path = Path(path)
    with atomic_output(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return path


def read_rtstruct_masks(path: str | Path, source_files: Sequence[str | Path]) -> dict[str, np.ndarray]:
    """The ROIs of an RT Structure Set rasterised onto a series: {ROI name: boolean mask}.

    A pixel belongs to an ROI when its centre lies inside an odd number of the ROI's contours on
    its slice (the even-odd rule: a contour inside another is a hole). Contours find their slice by
    the referenced SOP Instance UID, or, without one, by their distance from the slice planes.

    Args:
        path: the RTSTRUCT file.
        source_files: the series' files in slice order (``k``).

    Returns:
        Masks indexed (i, j, k) = (column, row, slice), like :func:`write_rtstruct`'s label map.

    Raises:
        ValueError: when the file is not an RT Structure Set, or a contour lies on no slice of the
            series (naming the ROI).
    """
    import pydicom

    rtstruct = pydicom.dcmread(str(path))
    if str(rtstruct.get("SOPClassUID", "")) != RTSTRUCT_SOP_CLASS_UID:
        raise ValueError(f"{path}: not an RT Structure Set (SOP Class UID {rtstruct.get('SOPClassUID')})")
    sources = _read_sources(source_files)
    geometry = _SliceGeometry(sources, str(path))
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    slice_of = {str(s.SOPInstanceUID): k for k, s in enumerate(sources)}
    along_normal = geometry.positions @ geometry.normal
    tolerance = 0.5 * float(np.median(np.diff(along_normal))) if len(sources) > 1 else 0.5  # mm
    names = {int(r.ROINumber): str(r.ROIName) for r in rtstruct.StructureSetROISequence}
    masks = {}
    for roi_contour in rtstruct.get("ROIContourSequence", []):
        roi_name = names.get(int(roi_contour.ReferencedROINumber), str(roi_contour.ReferencedROINumber))
        on_slice: dict[int, list[np.ndarray]] = {}
        for contour in roi_contour.get("ContourSequence", []):
            points = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
            images = contour.get("ContourImageSequence", [])
            if images and str(images[0].ReferencedSOPInstanceUID) in slice_of:
                k = slice_of[str(images[0].ReferencedSOPInstanceUID)]
            else:
                k = int(np.argmin(np.abs(along_normal - float(np.mean(points @ geometry.normal)))))
            pixels, off_plane = geometry.to_pixels(k, points)
            if np.max(np.abs(off_plane)) > tolerance:
                raise ValueError(
                    f"{path}: a contour of ROI {roi_name!r} lies {np.max(np.abs(off_plane)):.2f} mm from "
                    f"the plane of slice {k} of the series (at most {tolerance:.2f} mm expected)"
                )
            on_slice.setdefault(k, []).append(pixels)
        mask = np.zeros((len(sources), rows, cols), dtype=bool)
        for k, contours in on_slice.items():
            mask[k] = fill_contours(contours, (rows, cols))
        masks[roi_name] = mask.transpose(2, 1, 0)  # (slice, row, column) -> (column, row, slice)
    return masks
