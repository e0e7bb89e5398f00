"""Synthetic DICOM series: a volume written as a classic single-frame CT/MR series.

For demo data, tests and benchmarks (the same scan as NIfTI and as DICOM): the series gets the
volume's world geometry and made-up patient tags (``subject``), never a real patient's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data.utils import affine_to_spacing, orientation_ras_lps, to_affine_nd

from unet_med.atomic_files import atomic_output

__all__ = ["write_dicom_series"]


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
    # a 2D (3x3) affine is embedded in 3D with unit slice spacing
    lps = orientation_ras_lps(to_affine_nd(3, np.asarray(affine, dtype=float)))
    spacing = affine_to_spacing(lps, r=3, suppress_zeros=False)
    origin, direction = lps[:3, 3], lps[:3, :3] / spacing
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
