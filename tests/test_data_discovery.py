"""Scan discovery and loading: DICOM series grouping and ordering, skip reasons, geometry, load errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from unet_med.data import ScanLoadError, load_image, load_scan
from unet_med.data.dicom import write_dicom_series
from unet_med.data.discovery import discover_scans
from unet_med.data.writing import save_nifti

# A right-handed, rotated, anisotropic RAS affine (as a DICOM series has).
AFFINE = np.array(
    [[-0.7 * np.cos(0.3), 0.7 * np.sin(0.3), 0, 12.0], [-0.7 * np.sin(0.3), -0.7 * np.cos(0.3), 0, -8.0],
     [0, 0, 2.5, 40.0], [0, 0, 0, 1]]
)  # fmt: skip


def volume(shape=(20, 16, 9), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1500, shape).astype(np.int16)


def test_multi_series_folder_and_series_spread_over_folders(tmp_path):
    write_dicom_series(volume(seed=1), AFFINE, tmp_path / "mixed", file_names=[f"a{k}.dcm" for k in range(9)])
    write_dicom_series(
        volume((12, 12, 5), seed=2), AFFINE, tmp_path / "mixed", file_names=[f"b{k}" for k in range(5)]
    )
    uid = generate_uid()
    paths = write_dicom_series(volume((10, 10, 6), 3), AFFINE, tmp_path / "spread" / "part1", series_uid=uid)
    for p in paths[3:]:  # move half of the series to a sibling folder
        (tmp_path / "spread" / "part2").mkdir(exist_ok=True)
        p.rename(tmp_path / "spread" / "part2" / p.name)
    found = discover_scans(tmp_path)
    assert not found.skipped
    by_files = sorted((len(s.files), s.source, s.shape) for s in found.scans)
    assert by_files == [(5, "mixed", (12, 12, 5)), (6, "spread", (10, 10, 6)), (9, "mixed", (20, 16, 9))]
    assert all(s.kind == "dicom" and s.scan_id.startswith(s.source + "_") for s in found.scans)
    assert len({s.scan_id for s in found.scans}) == 3
    spread = next(s for s in found.scans if s.source == "spread")
    assert np.array_equal(load_scan(spread, dtype=None)[0].numpy(), volume((10, 10, 6), 3))


def test_slices_ordered_by_position_not_file_name_or_instance_number(tmp_path):
    vol = volume(seed=4)
    names = [f"IMG{k:03d}" for k in range(9)]
    random.Random(0).shuffle(names)
    paths = write_dicom_series(vol, AFFINE, tmp_path / "ct", file_names=names)
    numbers = list(range(1, 10))
    random.Random(1).shuffle(numbers)
    for p, n in zip(paths, numbers):  # scramble InstanceNumber too
        ds = pydicom.dcmread(p)
        ds.InstanceNumber = n
        ds.save_as(p)
    (scan,) = discover_scans(tmp_path).scans
    assert [p.name for p in scan.files] == names  # slice order, whatever the names
    assert scan.spacing == pytest.approx((0.7, 0.7, 2.5), abs=1e-5)
    assert np.array_equal(load_scan(scan, dtype=None)[0].numpy(), vol)


def test_nifti_and_dicom_series_load_to_same_array_and_world_geometry(tmp_path):
    vol = volume(seed=5)
    save_nifti(vol, AFFINE, tmp_path / "data" / "ct.nii.gz")
    write_dicom_series(vol, AFFINE, tmp_path / "data" / "ct_dicom")
    scans = {s.kind: s for s in discover_scans(tmp_path / "data").scans}
    nii, dcm = load_scan(scans["nifti"], dtype=None), load_scan(scans["dicom"], dtype=None)
    assert scans["nifti"].scan_id == "ct" and scans["nifti"].shape == scans["dicom"].shape == (20, 16, 9)
    assert np.allclose(scans["nifti"].spacing, scans["dicom"].spacing, atol=1e-5)
    assert nii.shape == dcm.shape == (1, 20, 16, 9)
    assert np.array_equal(nii.numpy(), dcm.numpy())
    assert np.allclose(np.asarray(nii.affine), AFFINE, atol=1e-5)
    assert np.allclose(np.asarray(dcm.affine), AFFINE, atol=1e-5)


def test_2d_inputs_png_tiff_and_single_slice_dicom(tmp_path):
    import SimpleITK as sitk

    img = np.random.default_rng(0).integers(0, 255, (24, 30)).astype(np.uint8)  # (rows, columns)
    sitk.WriteImage(sitk.GetImageFromArray(img), str(tmp_path / "cells.png"))
    sitk.WriteImage(sitk.GetImageFromArray(img.astype(np.uint16)), str(tmp_path / "cells2.tif"))
    write_dicom_series(img.T[:, :, None].astype(np.int16), AFFINE, tmp_path / "xr")
    scans = {s.scan_id: s for s in discover_scans(tmp_path).scans}
    assert scans["cells"].kind == scans["cells2"].kind == "image"
    for scan in scans.values():
        loaded = load_scan(scan, dtype=None)
        assert scan.shape == (30, 24) and loaded.shape == (1, 30, 24)
        assert np.array_equal(loaded[0].numpy(), img.T)
    dicom = next(s for s in scans.values() if s.kind == "dicom")
    assert np.allclose(np.asarray(load_scan(dicom).affine)[:3, :2], AFFINE[:3, :2], atol=1e-5)


def _non_image(path: Path, modality: str, pixels: bool) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4" if modality == "SEG" else "1.2.3"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.Modality, ds.SeriesInstanceUID, ds.SOPInstanceUID = (
        modality,
        generate_uid(),
        meta.MediaStorageSOPInstanceUID,
    )
    ds.PatientName = "Doe^Jane"
    if pixels:
        ds.Rows = ds.Columns = 2
        ds.BitsAllocated = 16
        ds.PixelData = b"\0" * 8
    ds.save_as(path, enforce_file_format=True)


def test_skip_reasons_for_non_scans_and_no_patient_tags_in_ids(tmp_path):
    write_dicom_series(volume(seed=6), AFFINE, tmp_path / "study", subject="Doe^Jane")
    (tmp_path / "notes.txt").write_text("hello")
    _non_image(tmp_path / "study" / "seg.dcm", "SEG", pixels=True)
    _non_image(tmp_path / "study" / "report.dcm", "SR", pixels=False)
    _non_image(tmp_path / "study" / "nopix.dcm", "CT", pixels=False)
    (tmp_path / "DICOMDIR").write_bytes(b"\0" * 200)
    found = discover_scans(tmp_path)
    reasons = {s.path: s.reason for s in found.skipped}
    assert "no 'DICM' preamble" in reasons["notes.txt"]
    assert "Modality SEG" in reasons["study/seg.dcm"]
    assert "Modality SR" in reasons["study/report.dcm"]
    assert "without pixel data" in reasons["study/nopix.dcm"]
    assert "DICOMDIR" in reasons["DICOMDIR"]
    assert len(found.scans) == 1 and len(found.scans[0].files) == 9
    text = json.dumps(found.as_dict())
    assert "Doe" not in text and "Jane" not in text


def test_broken_series_are_skipped_with_reason_and_fail_to_load(tmp_path):
    paths = write_dicom_series(volume(seed=7), AFFINE, tmp_path / "gap")
    paths[4].unlink()  # missing slice
    paths = write_dicom_series(volume(seed=8), AFFINE, tmp_path / "uneven")
    ds = pydicom.dcmread(paths[-1])
    ds.ImagePositionPatient = [
        float(v) + (0.9 if i == 2 else 0) for i, v in enumerate(ds.ImagePositionPatient)
    ]
    ds.save_as(paths[-1])
    paths = write_dicom_series(volume(seed=9), AFFINE, tmp_path / "sizes")
    write_dicom_series(volume((20, 18, 9), 9), AFFINE, tmp_path / "tmp_other",
                       series_uid=pydicom.dcmread(paths[0]).SeriesInstanceUID)  # fmt: skip
    (tmp_path / "tmp_other" / "slice_0004.dcm").rename(tmp_path / "sizes" / "odd.dcm")
    for p in (tmp_path / "tmp_other").iterdir():
        p.unlink()
    found = discover_scans(tmp_path)
    assert not found.scans
    reasons = {s.path: s.reason for s in found.skipped}
    assert "missing slice" in reasons["gap"] and "slice_0003.dcm" in reasons["gap"]
    assert "inconsistent slice spacing" in reasons["uneven"]
    assert "mixed image sizes" in reasons["sizes"]
    with pytest.raises(ScanLoadError, match=r"gap.*missing slice"):
        load_image(tmp_path / "gap")


def test_load_errors_name_the_file(tmp_path):
    path = save_nifti(volume(), AFFINE, tmp_path / "cut.nii")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScanLoadError, match=r"cut.nii: truncated or corrupt NIfTI"):
        load_image(path)
    assert "truncated NIfTI" in discover_scans(tmp_path).skipped[0].reason
    gz = save_nifti(volume(), AFFINE, tmp_path / "cut.nii.gz")
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


def test_scans_cli_table_json_and_empty_dir(tmp_path, capsys):
    from pipelines.cli import main

    save_nifti(volume(), AFFINE, tmp_path / "a" / "ct.nii.gz")
    (tmp_path / "a" / "readme.txt").write_text("x")
    assert main(["scans", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "ct  " in out and "nifti" in out and "20x16x9" in out and "readme.txt: not a DICOM file" in out
    assert main(["scans", str(tmp_path / "a"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["scans"][0]["scan_id"] == "ct" and doc["skipped"][0]["path"] == "readme.txt"
    (tmp_path / "empty").mkdir()
    assert main(["scans", str(tmp_path / "empty")]) == 1
    assert "no scans found" in capsys.readouterr().out
