"""Per-scan outputs of batch inference: names that never leave the output folder, the QC picture,
finished-scan detection."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from unet_med.data.discovery import Scan
from unet_med.data.writing import save_nifti
from unet_med.inference.outputs import finished_segmentation, output_path, output_stem
from unet_med.plots import save_qc_picture


def test_output_paths_never_leave_the_output_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for bad in ["../../etc/passwd", "a/b", "..", ".hidden", "x\x00y", "/abs", "ok name"]:
        path = output_path(out, bad, "_seg.nii.gz")
        assert path.parent == out and path.resolve().parent == out.resolve()
        assert not path.name.startswith(".")
    assert output_stem("ct_001") == "ct_001"
    assert output_stem("a/b") != output_stem("a_b")  # changed ids get a hash: no collisions


def test_a_scan_is_finished_when_its_label_map_is_complete_and_its_seg_exists(tmp_path):
    scan = Scan("ct", "dicom", "ct", [], shape=(4, 3, 2))
    assert finished_segmentation(tmp_path, scan, dicom_seg=False) is None
    save_nifti(np.ones((4, 3, 2), np.uint8), np.diag([0.5, 0.5, 2.0, 1.0]), tmp_path / "ct_seg.nii.gz")
    labels, voxel_size = finished_segmentation(tmp_path, scan, dicom_seg=False)
    assert labels.shape == (4, 3, 2) and voxel_size == [0.5, 0.5, 2.0]
    assert finished_segmentation(tmp_path, scan, dicom_seg=True) is None  # its DICOM SEG is missing
    (tmp_path / "ct_seg.dcm").write_bytes(b"SEG")
    assert finished_segmentation(tmp_path, scan, dicom_seg=True) is not None
    assert finished_segmentation(tmp_path, scan, dicom_seg=True, rtstruct=True) is None  # no RTSTRUCT yet
    (tmp_path / "ct_rtstruct.dcm").write_bytes(b"RTSTRUCT")
    assert finished_segmentation(tmp_path, scan, dicom_seg=True, rtstruct=True) is not None
    nifti_scan = Scan("ct", "nifti", "ct.nii.gz", [], shape=(4, 3, 2))
    (tmp_path / "ct_rtstruct.dcm").unlink()
    # only DICOM scans get an RTSTRUCT
    assert finished_segmentation(tmp_path, nifti_scan, dicom_seg=True, rtstruct=True) is not None
    other_shape = Scan("ct", "dicom", "ct", [], shape=(4, 3, 3))
    assert finished_segmentation(tmp_path, other_shape, dicom_seg=False) is None


def test_qc_picture_outlines_the_labels(tmp_path):
    image = np.random.default_rng(0).normal(size=(32, 24, 9)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[8:20, 6:16, 3:6] = 1
    path = save_qc_picture(image, labels, tmp_path / "scan_qc.png", title="scan")
    picture = np.asarray(Image.open(path).convert("RGB")).astype(int)
    colourful = np.abs(picture - picture.mean(axis=2, keepdims=True)).sum(axis=2) > 60
    assert colourful.any(), "the outline is drawn in colour over the grey image"
    empty = save_qc_picture(image, np.zeros_like(labels), tmp_path / "empty_qc.png")
    picture = np.asarray(Image.open(empty).convert("RGB")).astype(int)
    assert not (np.abs(picture - picture.mean(axis=2, keepdims=True)).sum(axis=2) > 60).any()
    with pytest.raises(ValueError, match="differs"):
        save_qc_picture(image, labels[:-1], tmp_path / "bad.png")
