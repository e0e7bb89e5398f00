"""Batch-inference building blocks: volumes in ml, reports and their merge, QC pictures,
post-processing and checkpoint loading."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from pipelines.infer import UsageError, load_checkpoint_state
from unet_med.postprocessing import postprocessing_transforms, to_input_geometry
from unet_med.reporting import (
    label_volumes,
    merge_reports,
    part_report_name,
    report_columns,
    save_qc_picture,
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
        "scan_id", "source", "status", "error", "seconds",
        "voxels_liver", "voxels_liver_tumour", "volume_ml_liver", "volume_ml_liver_tumour",
    ]
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


def test_postprocessing_keeps_largest_component_and_fills_holes():
    logits = torch.zeros(3, 20, 20)
    logits[1, 2:12, 2:12] = 5  # big square of label 1 with a hole
    logits[1, 6:8, 6:8] = -5
    logits[1, 15:17, 15:17] = 5  # small separate island of label 1
    logits[2, 15:18, 2:5] = 5  # label 2 survives independently
    plain = postprocessing_transforms()({"pred": logits})["pred"][0]
    assert plain[16, 16] == 1 and plain[7, 7] == 0
    cleaned = postprocessing_transforms(largest_component=True, fill_holes=True)({"pred": logits})["pred"][0]
    assert cleaned[16, 16] == 0  # island removed
    assert cleaned[7, 7] == 1  # hole filled
    assert (cleaned == 2).sum() == 9


def test_to_input_geometry_names_the_scan_when_shapes_disagree():
    data = {"pred": MetaTensor(torch.zeros(3, 6, 6, 4))}
    labels = to_input_geometry(data, preprocessing=None, spatial_shape=(6, 6, 4), name="scan x")
    assert labels.shape == (6, 6, 4) and labels.dtype == np.uint8
    with pytest.raises(ValueError, match=r"scan x: .*\(6, 6, 4\).*\(7, 6, 4\)"):
        to_input_geometry(data, preprocessing=None, spatial_shape=(7, 6, 4), name="scan x")


def test_checkpoint_forms_and_junk(tmp_path):
    state = {"w": torch.ones(2), "b": torch.zeros(1)}
    torch.save(state, tmp_path / "model.pt")
    assert set(load_checkpoint_state(tmp_path / "model.pt")) == {"w", "b"}
    torch.save({"network": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "last.pt")
    assert set(load_checkpoint_state(tmp_path / "last.pt")) == {"w", "b"}
    torch.save({"epoch": 3}, tmp_path / "nostate.pt")
    with pytest.raises(UsageError, match="no network state_dict"):
        load_checkpoint_state(tmp_path / "nostate.pt")
    torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a pickled module
    with pytest.raises(UsageError, match="weights_only=True"):
        load_checkpoint_state(tmp_path / "pickled.pt")
