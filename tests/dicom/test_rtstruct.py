"""RT Structure Sets: the round trip (contours read back and filled onto the series give the label
map) on the demo DICOM data, contours placed right in patient space for a flipped, non-axial series
with non-square pixels, and a file with the RTSTRUCT modules, referencing its series."""

from __future__ import annotations

import shutil
import subprocess

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.data.utils import orientation_ras_lps

from unet_med.data.demo import DEMO_LABELS_2D, DEMO_LABELS_3D, generate_demo_dataset
from unet_med.data.manifest import read_manifest
from unet_med.dicom.reading import read_dicom_series
from unet_med.dicom.rtstruct import (
    RTSTRUCT_SOP_CLASS_UID,
    fill_contours,
    read_rtstruct_masks,
    trace_slice_contours,
    write_rtstruct,
)
from unet_med.dicom.series import series_files
from unet_med.dicom.synthetic import write_dicom_series


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / max(1, int(a.sum()) + int(b.sum()))


@pytest.mark.parametrize("dims", [2, 3])
def test_round_trip_on_demo_dicom_gives_back_the_label_map(tmp_path, dims):
    manifest = generate_demo_dataset(
        tmp_path / "demo", dims=dims, n=3, format="dicom", size=32 if dims == 2 else 24
    )
    names = DEMO_LABELS_2D if dims == 2 else DEMO_LABELS_3D
    for row in read_manifest(manifest).itertuples():
        label = np.asanyarray(nib.load(row.label).dataobj)
        files = series_files([row.image])
        path = write_rtstruct(label, files, names, tmp_path / f"{row.subject_id}_rtstruct.dcm")
        masks = read_rtstruct_masks(path, files)
        assert list(masks) == [names[1], names[2]]
        for value in (1, 2):
            expected = (label == value).reshape(masks[names[value]].shape)
            assert expected.any()
            assert _dice(masks[names[value]], expected) >= 0.95
            assert np.array_equal(masks[names[value]], expected)  # marching squares: even exact


def test_fill_contours_agrees_with_skimage_and_makes_nested_contours_holes():
    from skimage.draw import polygon2mask

    rng = np.random.default_rng(0)
    for _ in range(20):  # random star-shaped polygons, partly outside the grid
        angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 30))))
        radii = rng.uniform(2, 25, len(angles))
        polygon = np.stack([20 + radii * np.sin(angles), 18 + radii * np.cos(angles)], axis=1)
        assert np.array_equal(fill_contours([polygon], (40, 30)), polygon2mask((40, 30), polygon))
    outer = np.array([[1.5, 1.5], [1.5, 9.5], [9.5, 9.5], [9.5, 1.5]])
    inner = np.array([[3.5, 3.5], [3.5, 6.5], [6.5, 6.5], [6.5, 3.5]])
    expected = np.zeros((12, 12), bool)
    expected[2:10, 2:10] = True
    expected[4:7, 4:7] = False
    assert np.array_equal(fill_contours([outer, inner], (12, 12)), expected)
    assert np.array_equal(fill_contours(trace_slice_contours(expected), (12, 12)), expected)


def test_holes_and_touching_objects_round_trip(tmp_path, oblique_affine):
    label = np.zeros((16, 14, 3), np.uint8)
    label[2:12, 2:12, 1] = 1
    label[5:8, 5:9, 1] = 0  # a hole in the ROI ...
    label[6, 6, 1] = 1  # ... with an island in it
    label[12, 12, 1] = 1  # touching the square at a corner only
    label[0:3, 0:2, 2] = 2  # at the image border
    write_dicom_series(np.zeros(label.shape), oblique_affine, tmp_path / "ct")
    files = series_files([tmp_path / "ct"])
    path = write_rtstruct(label, files, {1: "organ", 2: "lesion"}, tmp_path / "rt.dcm")
    masks = read_rtstruct_masks(path, files)
    assert np.array_equal(masks["organ"], label == 1)
    assert np.array_equal(masks["lesion"], label == 2)


def test_a_contour_of_over_64_kb_survives(tmp_path):
    # a comb: one contour of thousands of vertices, whose Contour Data cannot have a 2-byte length
    label = np.zeros((60, 512, 1), np.uint8)  # (columns, rows, slices)
    label[20:40, :, 0] = 1
    label[10:20, 0::2, 0] = 1
    label[40:50, 0::2, 0] = 1
    affine = np.diag([-0.9, -0.9, 2.0, 1.0])
    affine[:3, 3] = [-240.0, -460.0, 1000.0]
    write_dicom_series(np.zeros(label.shape), affine, tmp_path / "comb")
    files = series_files([tmp_path / "comb"])
    path = write_rtstruct(label, files, {1: "comb"}, tmp_path / "rt.dcm")
    (contour,) = pydicom.dcmread(path).ROIContourSequence[0].ContourSequence
    assert len("\\".join(map(str, contour.ContourData))) > 65535 and contour["ContourData"].VR == "DS"
    assert np.array_equal(read_rtstruct_masks(path, files)["comb"], label == 1)


def test_contours_lie_at_the_voxels_in_patient_space_for_a_flipped_coronal_series(tmp_path):
    # coronal slices, rows running head to feet, columns flipped (right to left), non-square
    # pixels (0.6 mm along i, 1.1 mm along j) and 3 mm slices: every axis convention shows
    # columns: the LPS directions of i, j, k
    lps_direction = np.array([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]]).T
    assert np.isclose(np.linalg.det(lps_direction), 1.0)
    spacing = np.array([0.6, 1.1, 3.0])
    lps = np.eye(4)
    lps[:3, :3] = lps_direction @ np.diag(spacing)
    lps[:3, 3] = [20.0, -35.0, 110.0]
    ras = orientation_ras_lps(lps)
    write_dicom_series(np.zeros((12, 10, 5)), ras, tmp_path / "cor", series_uid="1.2.3.99")
    files = series_files([tmp_path / "cor"])
    _, meta = read_dicom_series(files, "cor")  # SimpleITK's own reading of the series geometry
    np.testing.assert_allclose(meta["affine"], ras, atol=1e-4)
    assert pydicom.dcmread(files[0]).PixelSpacing != pydicom.dcmread(files[0]).PixelSpacing[::-1]

    label = np.zeros((12, 10, 5), np.uint8)
    label[7, 2, 3] = 1  # one voxel
    label[1:5, 3:9, 1] = 2  # 4 columns x 6 rows
    path = write_rtstruct(label, files, {1: "dot", 2: "box"}, tmp_path / "rt.dcm")
    rt = pydicom.dcmread(path)
    by_roi = {int(c.ReferencedROINumber): c.ContourSequence for c in rt.ROIContourSequence}
    sop_uid = [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]

    (dot,) = by_roi[1]
    assert dot.ContourImageSequence[0].ReferencedSOPInstanceUID == sop_uid[3]
    points = np.asarray(dot.ContourData, dtype=float).reshape(-1, 3)
    voxel_lps = orientation_ras_lps(meta["affine"]) @ np.array([7, 2, 3, 1.0])
    np.testing.assert_allclose(points.mean(axis=0), voxel_lps[:3], atol=1e-3)  # centred on the voxel
    # the contour stays within half a pixel of the voxel centre along each in-plane axis
    offsets = (points - voxel_lps[:3]) @ lps_direction
    assert np.allclose(offsets[:, 2], 0.0, atol=1e-3)  # in the slice plane
    assert np.abs(offsets[:, 0]).max() == pytest.approx(0.5 * 0.6, abs=1e-3)
    assert np.abs(offsets[:, 1]).max() == pytest.approx(0.5 * 1.1, abs=1e-3)

    (box,) = by_roi[2]
    assert box.ContourImageSequence[0].ReferencedSOPInstanceUID == sop_uid[1]
    points = np.asarray(box.ContourData, dtype=float).reshape(-1, 3)
    extent = np.ptp(points @ lps_direction, axis=0)  # mm along i, j, k
    # marching squares cuts the box's corners: its extent is (size - 1 + 2 * 0.5) voxels
    np.testing.assert_allclose(extent, [4 * 0.6, 6 * 1.1, 0.0], atol=1e-3)
    assert np.array_equal(read_rtstruct_masks(path, files)["box"], label == 2)


def test_file_is_an_rtstruct_referencing_its_series(tmp_path, random_volume, oblique_affine):
    write_dicom_series(random_volume((12, 10, 4), 1), oblique_affine, tmp_path / "ct", series_uid="1.2.3.4",
                       study_uid="1.2.3.5", subject="SECRETNAME")  # fmt: skip
    files = series_files([tmp_path / "ct"])
    sources = [pydicom.dcmread(f) for f in files]
    label = np.zeros((12, 10, 4), np.uint8)
    label[2:5, 3:6, 1:3] = 1
    labels = {0: "background", 1: "liver", 2: "tumour", 3: "spleen"}
    path = write_rtstruct(label, files, labels, tmp_path / "rt.dcm", algorithm_name="tiny3d",
                          algorithm_version="1.0")  # fmt: skip
    rt = pydicom.dcmread(path)  # with its preamble and file meta
    assert rt.preamble is not None and rt.file_meta.MediaStorageSOPClassUID == RTSTRUCT_SOP_CLASS_UID
    assert rt.SOPClassUID == RTSTRUCT_SOP_CLASS_UID and rt.Modality == "RTSTRUCT"
    assert rt.file_meta.MediaStorageSOPInstanceUID == rt.SOPInstanceUID
    # the modules of the RT Structure Set IOD with their type 1 and 2 attributes
    for keyword in (
        "PatientName", "PatientID", "PatientBirthDate", "PatientSex",  # Patient
        "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
        "SeriesInstanceUID", "SeriesNumber", "OperatorsName",  # RT Series
        "Manufacturer",  # General Equipment
        "FrameOfReferenceUID", "PositionReferenceIndicator",  # Frame of Reference
        "StructureSetLabel", "StructureSetDate", "StructureSetTime", "StructureSetROISequence",
        "ROIContourSequence", "RTROIObservationsSequence", "SOPInstanceUID",
    ):  # fmt: skip
        assert keyword in rt, keyword
    assert rt.PatientID == "SECRETNAME" and rt.StudyInstanceUID == "1.2.3.5"  # copied from the series
    assert rt.SeriesInstanceUID not in ("1.2.3.4", rt.StudyInstanceUID)
    frame = rt.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == rt.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    study = frame.RTReferencedStudySequence[0]
    assert study.ReferencedSOPInstanceUID == "1.2.3.5"
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == "1.2.3.4"
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == [
        s.SOPInstanceUID for s in sources
    ]
    assert {i.ReferencedSOPClassUID for i in series.ContourImageSequence} == {sources[0].SOPClassUID}
    # one ROI per foreground label with the bundle's names, its label value as number, own colours
    rois = rt.StructureSetROISequence
    assert [(r.ROINumber, r.ROIName) for r in rois] == [(1, "liver"), (2, "tumour"), (3, "spleen")]
    assert {r.ReferencedFrameOfReferenceUID for r in rois} == {sources[0].FrameOfReferenceUID}
    assert {r.ROIGenerationAlgorithm for r in rois} == {"AUTOMATIC"}
    colours = [tuple(c.ROIDisplayColor) for c in rt.ROIContourSequence]
    assert len(set(colours)) == 3
    assert [o.ReferencedROINumber for o in rt.RTROIObservationsSequence] == [1, 2, 3]
    liver = rt.ROIContourSequence[0]
    assert len(liver.ContourSequence) == 2  # slices 1 and 2
    assert "ContourSequence" not in rt.ROIContourSequence[1]  # no tumour voxels: no contours
    for k, contour in zip((1, 2), liver.ContourSequence):
        assert contour.ContourGeometricType == "CLOSED_PLANAR"
        assert len(contour.ContourData) == 3 * contour.NumberOfContourPoints
        points = np.asarray(contour.ContourData, dtype=float).reshape(-1, 3)
        assert not np.allclose(points[0], points[-1])  # closure is implied, not repeated
        assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID == sources[k].SOPInstanceUID
    assert not list(tmp_path.glob(".*tmp*"))  # written atomically
    with pytest.raises(ValueError, match=r"does not match the series \(12 columns x 10 rows x 4 slices\)"):
        write_rtstruct(label[:, :, :3], files, labels, tmp_path / "bad.dcm")
    with pytest.raises(ValueError, match="not an RT Structure Set"):
        read_rtstruct_masks(files[0], files)


@pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) not installed"
)
def test_dciodvfy_finds_no_error_in_the_rtstruct(tmp_path, random_volume, oblique_affine):
    write_dicom_series(random_volume((12, 10, 4), 1), oblique_affine, tmp_path / "ct")
    files = series_files([tmp_path / "ct"])
    label = np.zeros((12, 10, 4), np.uint8)
    label[2:9, 3:8, 0:3] = 1
    label[4:6, 4:6, 1] = 2
    path = write_rtstruct(label, files, {1: "liver", 2: "tumour"}, tmp_path / "rt.dcm")
    # dciodvfy checks every module of the IOD against David Clunie's tables of the standard
    found = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    text = found.stdout + found.stderr
    assert "RTStructureSet" in text
    assert [line for line in text.splitlines() if line.startswith("Error")] == []
