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
