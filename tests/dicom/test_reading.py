"""Reading DICOM pixel data: a series and the same volume as NIfTI give one array and one affine."""

from __future__ import annotations

import numpy as np

from unet_med.data import load_scan
from unet_med.data.discovery import discover_scans
from unet_med.data.writing import save_nifti
from unet_med.dicom.synthetic import write_dicom_series


def test_nifti_and_dicom_series_load_to_same_array_and_world_geometry(
    tmp_path, random_volume, oblique_affine
):
    vol = random_volume(seed=5)
    save_nifti(vol, oblique_affine, tmp_path / "data" / "ct.nii.gz")
    write_dicom_series(vol, oblique_affine, tmp_path / "data" / "ct_dicom")
    scans = {s.kind: s for s in discover_scans(tmp_path / "data").scans}
    nii, dcm = load_scan(scans["nifti"], dtype=None), load_scan(scans["dicom"], dtype=None)
    assert scans["nifti"].scan_id == "ct" and scans["nifti"].shape == scans["dicom"].shape == (20, 16, 9)
    assert np.allclose(scans["nifti"].spacing, scans["dicom"].spacing, atol=1e-5)
    assert nii.shape == dcm.shape == (1, 20, 16, 9)
    assert np.array_equal(nii.numpy(), dcm.numpy())
    assert np.allclose(np.asarray(nii.affine), oblique_affine, atol=1e-5)
    assert np.allclose(np.asarray(dcm.affine), oblique_affine, atol=1e-5)
