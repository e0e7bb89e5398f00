"""bench.scan reads its stage table from the report.csv that ``unet-med infer`` writes."""

from __future__ import annotations

import pytest

from bench.scan import STAGES, stage_seconds
from unet_med.inference.report import write_report


def test_stage_table_comes_from_the_one_segmented_row_and_splits_the_write(tmp_path):
    row = {"scan_id": "ct", "status": "ok", "seconds": 9.0, "seconds_load": 1.0, "seconds_preprocess": 0.5,
           "seconds_predict": 6.0, "seconds_postprocess": 0.4, "seconds_write": 1.0, "seconds_write_qc": 0.3,
           "seconds_write_dicom_seg": 0.5}  # fmt: skip
    failed = {"scan_id": "bad", "status": "failed", "error": "scan bad: cut"}
    path = write_report([row, failed], tmp_path / "report.csv", {0: "background", 1: "organ"})
    got = stage_seconds(path)
    assert set(got) == {*STAGES, "scan"}
    assert got["write_nifti"] == pytest.approx(0.2) and got["invert"] == 0.4 and got["scan"] == 9.0
    write_report([failed], path, {0: "background", 1: "organ"})
    with pytest.raises(RuntimeError, match="expected one segmented scan"):
        stage_seconds(path)
