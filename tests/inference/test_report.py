"""Batch-inference reports: volumes in ml, Dice, columns, part reports and their merge, and the
rows for what discovery set aside (decided by the skip kind, not by the message)."""

from __future__ import annotations

import math
import time

import numpy as np
import pandas as pd
import pytest

from unet_med.data.discovery import SkipKind, SkippedFile
from unet_med.inference.report import (
    STAGE_COLUMNS,
    discovery_rows,
    label_dice,
    label_volumes,
    merge_reports,
    part_report_name,
    report_columns,
    write_report,
)

LABELS = {0: "background", 1: "Liver", 2: "liver tumour"}


def test_volume_ml_arithmetic_on_a_known_mask():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[2:6, 2:7, 1:4] = 1  # 4 x 5 x 3 = 60 voxels
    mask[8, 8, 8] = 2
    got = label_volumes(mask, (0.5, 0.8, 2.5), LABELS)  # 1 mm^3 per voxel
    assert got == {
        "voxels_liver": 60,
        "volume_ml_liver": pytest.approx(0.060),
        "voxels_liver_tumour": 1,
        "volume_ml_liver_tumour": pytest.approx(0.001),
    }
    got = label_volumes(mask, (2.0, 2.0, 5.0), LABELS)  # 20 mm^3 per voxel
    assert got["volume_ml_liver"] == pytest.approx(1.2)
    assert label_volumes(np.zeros((4, 4), np.uint8), (1.0, 1.0), LABELS)["voxels_liver"] == 0


def test_report_columns_and_merge_of_part_reports(tmp_path):
    assert report_columns(LABELS) == [
        "scan_id",
        "source",
        "status",
        "error",
        "seconds",
        "kind",
        "study_id",
        "selection",
        "warning",
        "voxels_liver",
        "voxels_liver_tumour",
        "volume_ml_liver",
        "volume_ml_liver_tumour",
    ] + STAGE_COLUMNS
    assert part_report_name(0, 1) == "report.csv"
    assert part_report_name(1, 3) == "report.part-1-of-3.csv"
    first = [{"scan_id": "b", "status": "ok", "voxels_liver": 3}]
    write_report(first, tmp_path / part_report_name(0, 2), LABELS)
    time.sleep(0.01)
    write_report(
        [{"scan_id": "a", "status": "failed", "error": "scan a: cut"}, {"scan_id": "c", "status": "ok"}],
        tmp_path / part_report_name(1, 2),
        LABELS,
    )
    merged = pd.read_csv(merge_reports(tmp_path))
    assert list(merged["scan_id"]) == ["a", "b", "c"]
    assert list(merged["status"]) == ["failed", "ok", "ok"]
    assert merged.loc[1, "voxels_liver"] == 3
    write_report([{"scan_id": "a"}], tmp_path / "report.part-0-of-9.csv", {0: "bg", 1: "other"})
    with pytest.raises(ValueError, match="report.part-0-of-9.csv"):
        merge_reports(tmp_path)
    with pytest.raises(FileNotFoundError, match="no part reports"):
        merge_reports(tmp_path / "nothing")


def test_dice_per_label_and_nan_for_a_label_absent_from_both():
    prediction = np.zeros((6, 6), np.uint8)
    prediction[:2, :2] = 1
    reference = prediction.copy()
    reference[4, 4] = 3
    dice = label_dice(prediction, reference, {0: "bg", 1: "organ", 2: "lesion", 3: "cyst"})
    assert dice["dice_organ"] == pytest.approx(1.0)
    assert math.isnan(dice["dice_lesion"])  # in neither map: no evidence, not a perfect 1.0
    assert dice["dice_cyst"] == 0.0  # only in the reference
    with pytest.raises(ValueError, match="shape"):
        label_dice(prediction, reference[:3], {0: "bg", 1: "organ"})
    with pytest.raises(ValueError, match=r"reference label values \[3\]"):
        label_dice(prediction, reference, {0: "bg", 1: "organ"})


def test_set_aside_files_are_reported_by_kind_not_by_message():
    misleading = "hidden file"  # the message of a file that gets no row: the kind must decide
    rows = discovery_rows(
        [
            SkippedFile("study/seg.dcm", misleading, SkipKind.NON_IMAGE_OBJECT),
            SkippedFile("gap", misleading, SkipKind.BROKEN_SERIES),
            SkippedFile("study/x.dcm", "non-image DICOM object (Modality SEG)", SkipKind.HIDDEN),
            SkippedFile("notes.txt", "DICOMDIR index file, not an image", SkipKind.NOT_DICOM),
            SkippedFile("cut.nii.gz", "DICOM file without pixel data", SkipKind.TRUNCATED_NIFTI),
            SkippedFile(".old.nii.gz", "hidden file", SkipKind.HIDDEN),  # a NIfTI file is a scan
        ]
    )
    assert {r["source"]: r["status"] for r in rows} == {
        "study/seg.dcm": "skipped", "gap": "failed", "cut.nii.gz": "failed", ".old.nii.gz": "failed"
    }  # fmt: skip
    assert {r["scan_id"] for r in rows} == {"study_seg", "gap", "cut", "old"}
    assert all(r["error"] for r in rows)  # the message is kept for humans


def test_discovery_rows_keep_discoverys_ids_kinds_and_selection_decisions():
    from unet_med.data.discovery import Scan

    decision = "not selected: slices>=8 (found 3)"
    scan = Scan("ct_1a2b3c4d", "dicom", "ct", [], study_id="study_0f", selection=decision)
    broken = SkipKind.BROKEN_SERIES
    rows = discovery_rows(
        [
            SkippedFile("MR2", "missing slice(s) ...", broken, "MR2_aaaa0001", "dicom", "study_0f"),
            SkippedFile("MR2", "missing slice(s) ...", broken, "MR2_aaaa0002", "dicom", "study_0f"),
            SkippedFile("rt.dcm", "non-image object", SkipKind.NON_IMAGE_OBJECT, "rt", "skipped-object"),
            SkippedFile("ct", scan.selection, SkipKind.NOT_SELECTED, scan.scan_id, "dicom", "study_0f",
                        scan.selection, scan),  # fmt: skip
            SkippedFile("notes.txt", "not a DICOM file", SkipKind.NOT_DICOM, "notes", "other"),
        ]
    )
    by_id = {r["scan_id"]: r for r in rows}
    assert list(by_id) == ["MR2_aaaa0001", "MR2_aaaa0002", "rt", "ct_1a2b3c4d"]  # no row for notes.txt
    assert by_id["MR2_aaaa0001"]["status"] == "failed" and by_id["MR2_aaaa0001"]["kind"] == "dicom"
    assert by_id["rt"]["status"] == "skipped" and by_id["rt"]["kind"] == "skipped-object"
    chosen = by_id["ct_1a2b3c4d"]
    assert chosen["status"] == "skipped" and chosen["error"] == ""
    assert chosen["selection"] == "not selected: slices>=8 (found 3)" and chosen["study_id"] == "study_0f"
