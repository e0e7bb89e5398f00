"""Scan discovery: DICOM series grouped by SeriesInstanceUID across files and folders, skip
reasons and their kinds, no patient tags in ids."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from unet_med.data import load_scan
from unet_med.data.discovery import SkipKind, discover_scans
from unet_med.data.writing import save_nifti
from unet_med.dicom.synthetic import write_dicom_series


def test_multi_series_folder_and_series_spread_over_folders(tmp_path, random_volume, oblique_affine):
    write_dicom_series(
        random_volume(seed=1), oblique_affine, tmp_path / "mixed", file_names=[f"a{k}.dcm" for k in range(9)]
    )
    write_dicom_series(
        random_volume((12, 12, 5), seed=2),
        oblique_affine,
        tmp_path / "mixed",
        file_names=[f"b{k}" for k in range(5)],
    )
    uid = generate_uid()
    paths = write_dicom_series(
        random_volume((10, 10, 6), 3), oblique_affine, tmp_path / "spread" / "part1", series_uid=uid
    )
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
    assert np.array_equal(load_scan(spread, dtype=None)[0].numpy(), random_volume((10, 10, 6), 3))


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


def test_skip_reasons_for_non_scans_and_no_patient_tags_in_ids(tmp_path, random_volume, oblique_affine):
    write_dicom_series(random_volume(seed=6), oblique_affine, tmp_path / "study", subject="Doe^Jane")
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


def test_every_skipped_file_has_a_skip_kind(tmp_path, random_volume, oblique_affine):
    write_dicom_series(random_volume(seed=6), oblique_affine, tmp_path / "study")
    _non_image(tmp_path / "study" / "seg.dcm", "SEG", pixels=True)
    _non_image(tmp_path / "study" / "nopix.dcm", "CT", pixels=False)
    (tmp_path / "DICOMDIR").write_bytes(b"\0" * 200)
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    save_nifti(np.zeros((4, 4, 3, 2), np.int16), np.eye(4), tmp_path / "four_d.nii")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    paths = write_dicom_series(random_volume(seed=7), oblique_affine, tmp_path / "gap")
    paths[4].unlink()
    kinds = {s.path: s.kind for s in discover_scans(tmp_path).skipped}
    assert all(isinstance(kind, SkipKind) for kind in kinds.values())
    assert kinds == {
        "study/seg.dcm": SkipKind.NON_IMAGE_OBJECT,
        "study/nopix.dcm": SkipKind.NO_PIXEL_DATA,
        "DICOMDIR": SkipKind.DICOMDIR,
        "notes.txt": SkipKind.NOT_DICOM,
        ".hidden": SkipKind.HIDDEN,
        "bad.nii.gz": SkipKind.UNREADABLE_NIFTI,
        "four_d.nii": SkipKind.NOT_2D_OR_3D,
        "bad.png": SkipKind.UNREADABLE_IMAGE,
        "gap": SkipKind.BROKEN_SERIES,
    }


def _rtstruct_without_preamble(path: Path, study_uid: str) -> None:
    """An RT Structure Set written as a bare dataset: no 128-byte preamble, no 'DICM', no file meta
    (as some planning systems and archives write them)."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.481.3"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.PatientName = "Doe^Jane"
    ds.StructureSetLabel = "organs"
    ds.save_as(path, implicit_vr=True, little_endian=True)


def test_every_rejected_series_and_file_has_its_own_id_and_kind(tmp_path, random_volume, oblique_affine):
    study = generate_uid()
    write_dicom_series(random_volume(seed=1), oblique_affine, tmp_path / "MR2", study_uid=study)
    for seed in (2, 3):  # two broken series in one folder: each gets its own id, not the folder's
        names = [f"s{seed}_{k}.dcm" for k in range(9)]
        paths = write_dicom_series(
            random_volume(seed=seed), oblique_affine, tmp_path / "MR2", file_names=names, study_uid=study
        )
        paths[4].unlink()
    _rtstruct_without_preamble(tmp_path / "MR2" / "rtstruct.dcm", study)
    save_nifti(random_volume(), np.eye(4), tmp_path / "rtstruct.nii.gz")  # a scan with the same stem
    (tmp_path / "rtstruct.txt").write_text("notes")  # no scan: must not take an id a row needs
    found = discover_scans(tmp_path)
    ids = [s.scan_id for s in found.scans] + [s.scan_id for s in found.skipped]
    assert len(ids) == len(set(ids))
    broken = [s for s in found.skipped if s.kind == SkipKind.BROKEN_SERIES]
    assert len(broken) == 2 and all(s.path == "MR2" and s.scan_id.startswith("MR2_") for s in broken)
    assert all(s.scan_id in s.reason for s in broken)  # the row's id is the one its error names
    (rt,) = [s for s in found.skipped if s.path == "MR2/rtstruct.dcm"]
    assert rt.kind == SkipKind.NON_IMAGE_OBJECT and rt.input_kind == "skipped-object"
    assert "not an image series" in rt.reason and "RT Structure Set" in rt.reason
    kinds = sorted((s.kind, s.scan_id[:4]) for s in found.scans)
    assert kinds == [("dicom", "MR2_"), ("nifti", "rtst")]
    assert rt.scan_id == "MR2_rtstruct" and "rtstruct" in [s.scan_id for s in found.scans]
    # one study: the same study_id (a hash, not the UID) on the series and the structure set
    dicom = next(s for s in found.scans if s.kind == "dicom")
    assert dicom.study_id.startswith("study_") and study not in dicom.study_id
    assert {s.study_id for s in broken} == {dicom.study_id}
    text = json.dumps(found.as_dict())
    assert "Doe" not in text and study not in text


def test_selection_sets_scans_aside_with_the_failing_rule(tmp_path, random_volume, oblique_affine):
    from unet_med.dicom.selection import parse_rules

    write_dicom_series(random_volume(seed=1), oblique_affine, tmp_path / "ct", series_description="Abdomen")
    write_dicom_series(random_volume((20, 16, 3), 2), oblique_affine, tmp_path / "short")
    write_dicom_series(random_volume(seed=3), oblique_affine, tmp_path / "mr", modality="MR")
    paths = write_dicom_series(random_volume(seed=4), oblique_affine, tmp_path / "scout",
                               series_description="SCOUT")  # fmt: skip
    paths[4].unlink()  # broken, but a header rule rejects it first: not selected, not failed
    save_nifti(random_volume(), oblique_affine, tmp_path / "vol.nii.gz")
    rules = parse_rules(["Modality!=MR", "SeriesDescription!~/(?i)scout/", "slices>=8", "orientation==axial"])
    found = discover_scans(tmp_path, rules)
    assert sorted(s.source for s in found.scans) == ["ct", "vol.nii.gz"]
    assert all(s.selection == "selected" for s in found.scans)
    decisions = {s.path: s.reason for s in found.skipped}
    assert decisions == {
        "short": "not selected: slices>=8 (found 3)",
        "mr": "not selected: Modality!=MR (found MR)",
        "scout": "not selected: SeriesDescription!~/(?i)scout/",
    }
    assert all(s.kind == SkipKind.NOT_SELECTED for s in found.skipped)
