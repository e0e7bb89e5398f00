"""DICOM series: slices ordered along the slice normal, broken series named with their problem."""

from __future__ import annotations

import random

import numpy as np
import pydicom
import pytest

from unet_med.data import ScanLoadError, load_image, load_scan
from unet_med.data.discovery import discover_scans
from unet_med.dicom.synthetic import write_dicom_series


def test_slices_ordered_by_position_not_file_name_or_instance_number(tmp_path, random_volume, oblique_affine):
    vol = random_volume(seed=4)
    names = [f"IMG{k:03d}" for k in range(9)]
    random.Random(0).shuffle(names)
    paths = write_dicom_series(vol, oblique_affine, tmp_path / "ct", file_names=names)
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


def test_broken_series_are_skipped_with_reason_and_fail_to_load(tmp_path, random_volume, oblique_affine):
    paths = write_dicom_series(random_volume(seed=7), oblique_affine, tmp_path / "gap")
    paths[4].unlink()  # missing slice
    paths = write_dicom_series(random_volume(seed=8), oblique_affine, tmp_path / "uneven")
    ds = pydicom.dcmread(paths[-1])
    ds.ImagePositionPatient = [
        float(v) + (0.9 if i == 2 else 0) for i, v in enumerate(ds.ImagePositionPatient)
    ]
    ds.save_as(paths[-1])
    paths = write_dicom_series(random_volume(seed=9), oblique_affine, tmp_path / "sizes")
    write_dicom_series(random_volume((20, 18, 9), 9), oblique_affine, tmp_path / "tmp_other",
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


def _shift(path, offset) -> None:
    ds = pydicom.dcmread(path)
    ds.ImagePositionPatient = [f"{float(v) + d:.6f}" for v, d in zip(ds.ImagePositionPatient, offset)]
    ds.save_as(path)


def test_duplicates_gantry_tilt_and_missing_slices_each_get_their_decision(
    tmp_path, random_volume, oblique_affine
):
    vol = random_volume(seed=3)
    # the same image stored twice (same SOPInstanceUID): one image, accepted with a warning
    paths = write_dicom_series(vol, oblique_affine, tmp_path / "copied")
    (tmp_path / "copied" / "zz_copy.dcm").write_bytes(paths[4].read_bytes())
    # two different images at one position: several acquisitions in one series, rejected
    paths = write_dicom_series(vol, oblique_affine, tmp_path / "twice")
    ds = pydicom.dcmread(paths[4])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "twice" / "echo2.dcm")
    # gantry tilt: every slice shifted sideways (along the rows) by tan(15 deg) x 2.5 mm more
    paths = write_dicom_series(vol, oblique_affine, tmp_path / "tilted")
    ds = pydicom.dcmread(paths[0])
    row = np.asarray(ds.ImageOrientationPatient[:3], dtype=float)
    normal = np.cross(row, np.asarray(ds.ImageOrientationPatient[3:], dtype=float))
    for k, p in enumerate(paths):
        _shift(p, k * 2.5 * np.tan(np.radians(15)) * row)
    # a gap of 1.6x the spacing (not a whole number of slices) is still a missing slice
    paths = write_dicom_series(vol, oblique_affine, tmp_path / "gap")
    for p in paths[5:]:
        _shift(p, 1.5 * normal)
    found = discover_scans(tmp_path)
    (scan,) = found.scans
    assert scan.source == "copied" and len(scan.files) == 9
    assert "1 duplicate file(s) of the same image" in scan.warning and "zz_copy.dcm" in scan.warning
    assert np.array_equal(load_scan(scan, dtype=None)[0].numpy(), vol)
    assert np.array_equal(load_image(tmp_path / "copied")[0].numpy(), vol)
    reasons = {s.path: s.reason for s in found.skipped}
    assert "two different images at the same position" in reasons["twice"]
    assert "several acquisitions" in reasons["twice"]
    assert "gantry tilt of 15.0 degrees" in reasons["tilted"]
    assert "missing slice(s): gap of 4.000 mm" in reasons["gap"] and "2.500 mm" in reasons["gap"]
    with pytest.raises(ScanLoadError, match="gantry tilt"):
        load_image(tmp_path / "tilted")
