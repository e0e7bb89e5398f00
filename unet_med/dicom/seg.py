"""DICOM Segmentation objects (highdicom) for label maps predicted on DICOM series."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from unet_med.atomic_files import atomic_output

__all__ = ["write_dicom_seg"]

_TYPE2_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)


def write_dicom_seg(
    label_map: np.ndarray,
    source_files: Sequence[str | Path],
    labels: Mapping[int, str],
    path: str | Path,
    *,
    algorithm_name: str = "unet-med",
    algorithm_version: str = "0",
) -> Path:
    """Write a binary DICOM SEG referencing the source series, one segment per foreground label.

    Args:
        label_map: integer labels indexed (i, j, k) = (column, row, slice), the array order of
            :func:`unet_med.data.loading.load_scan`; 2D maps are one slice.
        source_files: the series' files in slice order (``k``), as the loader read them.
        labels: {label value: name}; 0 (background) is not a segment.
        path: target file, written atomically.

    Raises:
        ValueError: when the label map does not match the series (rows, columns, slice count).
    """
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    label_map = np.asarray(label_map)
    if label_map.ndim == 2:
        label_map = label_map[:, :, None]
    sources = [pydicom.dcmread(str(f)) for f in source_files]
    for ds in sources:
        # Patient/study attributes that the SEG copies are type 2 (must exist, may be empty);
        # some exporters omit them, so add them empty in memory (the source files are not touched).
        for keyword in _TYPE2_COPIED:
            if keyword not in ds:
                setattr(ds, keyword, "")
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if label_map.shape != (cols, rows, len(sources)):
        raise ValueError(
            f"DICOM SEG: label map of shape {label_map.shape} does not match the series "
            f"({cols} columns x {rows} rows x {len(sources)} slices)"
        )
    frames = np.ascontiguousarray(label_map.transpose(2, 1, 0)).astype(np.uint8)  # (slice, row, column)
    foreground = sorted(v for v in labels if v != 0)
    # highdicom wants segment numbers 1..n: renumber labels in order
    remapped = np.zeros_like(frames)
    for number, value in enumerate(foreground, start=1):
        remapped[frames == value] = number
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=algorithm_version, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=str(labels[value])[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, value in enumerate(foreground, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=remapped,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="unet-med",
        manufacturer_model_name=algorithm_name[:64],
        software_versions=algorithm_version,
        device_serial_number="0",
        omit_empty_frames=False,
    )
    path = Path(path)
    with atomic_output(path) as tmp:
        seg.save_as(tmp)
    return path
