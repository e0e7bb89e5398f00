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


def test_segmentation_figures_compare_two_label_maps_and_each_with_the_synthetic_label():
    import numpy as np

    from bench.scan import SyntheticCT, segmentation_figures

    label = np.zeros((4, 5, 6), np.uint8)
    label[1:3, 1:4, 1:5] = 1
    label[2, 2, 2:4] = 2
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    ct = SyntheticCT(inputs=None, label=label, affine=affine)
    worse = label.copy()
    worse[1, 1, 1:5] = 0  # 4 of the 24 organ voxels lost
    figures = segmentation_figures({"baseline": (label, affine), "current": (worse, affine)}, ct)
    assert figures["baseline"]["dice_mean"] == 1.0
    assert figures["current"]["dice_organ"] == pytest.approx(2 * 18 / (18 + 22))
    assert figures["voxel_agreement"] == pytest.approx(1 - 4 / label.size)
    assert figures["dice_difference"] == pytest.approx(1 - figures["current"]["dice_mean"])
    with pytest.raises(RuntimeError, match="not in the scan's grid"):
        segmentation_figures({"current": (label, np.diag([1.0, 0.7, 2.5, 1.0]))}, ct)


def test_a_baseline_revision_is_extracted_with_its_own_command_line(tmp_path):
    from bench.scan import materialise_revision

    tree = materialise_revision("HEAD", tmp_path / "baseline")
    assert tree.name.startswith("baseline ") and (tree.root / "pipelines" / "cli.py").is_file()
    assert (tree.root / "bundles" / "unet3d" / "configs" / "inference.json").is_file()
    with pytest.raises(SystemExit, match="not a commit"):
        materialise_revision("no-such-revision", tmp_path / "other")
