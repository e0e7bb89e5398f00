"""Loading scans: 2D inputs (PNG, TIFF, single-slice DICOM) and load errors that name the file."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from unet_med.data import ScanLoadError, load_image, load_scan
from unet_med.data.discovery import discover_scans
from unet_med.data.writing import save_nifti
from unet_med.dicom.synthetic import write_dicom_series


def test_2d_inputs_png_tiff_and_single_slice_dicom(tmp_path, oblique_affine):
    import SimpleITK as sitk

    img = np.random.default_rng(0).integers(0, 255, (24, 30)).astype(np.uint8)  # (rows, columns)
    sitk.WriteImage(sitk.GetImageFromArray(img), str(tmp_path / "cells.png"))
    sitk.WriteImage(sitk.GetImageFromArray(img.astype(np.uint16)), str(tmp_path / "cells2.tif"))
    write_dicom_series(img.T[:, :, None].astype(np.int16), oblique_affine, tmp_path / "xr")
    scans = {s.scan_id: s for s in discover_scans(tmp_path).scans}
    assert scans["cells"].kind == scans["cells2"].kind == "image"
    for scan in scans.values():
        loaded = load_scan(scan, dtype=None)
        assert scan.shape == (30, 24) and loaded.shape == (1, 30, 24)
        assert np.array_equal(loaded[0].numpy(), img.T)
    dicom = next(s for s in scans.values() if s.kind == "dicom")
    assert np.allclose(np.asarray(load_scan(dicom).affine)[:3, :2], oblique_affine[:3, :2], atol=1e-5)


def test_load_errors_name_the_file(tmp_path, random_volume, oblique_affine):
    path = save_nifti(random_volume(), oblique_affine, tmp_path / "cut.nii")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScanLoadError, match=r"cut.nii: truncated or corrupt NIfTI"):
        load_image(path)
    assert "truncated NIfTI" in discover_scans(tmp_path).skipped[0].reason
    gz = save_nifti(random_volume(), oblique_affine, tmp_path / "cut.nii.gz")
    gz.write_bytes(gz.read_bytes()[:300])
    with pytest.raises(ScanLoadError, match=r"cut.nii.gz: .*(truncated|not a readable)"):
        load_image(gz)
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), np.eye(4)), str(tmp_path / "t.nii.gz"))
    with pytest.raises(ScanLoadError, match=r"t.nii.gz: 4D NIfTI of shape \(4, 4, 4, 3\)"):
        load_image(tmp_path / "t.nii.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScanLoadError, match=r"empty: no DICOM image files \(empty\)"):
        load_image(tmp_path / "empty")
    with pytest.raises(ScanLoadError, match="file not found"):
        load_image(tmp_path / "missing.nii.gz")
