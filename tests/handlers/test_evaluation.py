"""The per-case evaluation report: one row per case, Dice per class, surface distances in mm from
the prediction's affine, empty distances for absent classes, the CSV and its summary."""

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from monai.data import MetaTensor

from unet_med.handlers.evaluation import EvaluationReport


def _one_hot(mask_cell: torch.Tensor, spacing_mm: float) -> MetaTensor:
    """(3, 12, 12) one-hot: background, ``cell`` = the mask, ``dense_cell`` absent."""
    cell = mask_cell.float()
    channels = torch.stack([1 - cell, cell, torch.zeros_like(cell)])
    return MetaTensor(channels, affine=torch.diag(torch.tensor([spacing_mm, spacing_mm, 1.0, 1.0])))


def _case(spacing_mm: float, shift: int) -> dict:
    label = torch.zeros(12, 12, dtype=torch.bool)
    label[3:8, 3:8] = True
    pred = torch.roll(label, shifts=shift, dims=0)
    return {"pred": _one_hot(pred, spacing_mm), "label": _one_hot(label, spacing_mm)}


def _engine(outputs, batch):
    return SimpleNamespace(state=SimpleNamespace(output=outputs, batch=batch))


def test_rows_per_case_with_dice_and_distances_in_mm(tmp_path):
    report = EvaluationReport(tmp_path, ["background", "cell", "dense_cell"])
    report.collect(_engine([_case(1.0, 0), _case(1.0, 1)], [{"subject_id": "s1"}, {}]))
    report.collect(_engine([_case(2.0, 1)], [{"subject_id": "s3"}]))
    path = report.write(_engine(None, None))
    table = pd.read_csv(path)
    assert path == tmp_path / "per_case_metrics.csv"
    assert list(table["subject_id"]) == ["s1", "case1", "s3"]
    assert list(table.columns[:4]) == ["subject_id", "dice_cell", "hd95_mm_cell", "assd_mm_cell"]
    perfect, shifted_1mm, shifted_2mm = table.to_dict("records")
    assert perfect["dice_cell"] == 1.0 and perfect["hd95_mm_cell"] == 0.0 and perfect["mean_dice"] == 1.0
    assert shifted_1mm["dice_cell"] == pytest.approx(0.8)  # 20 of 25 pixels overlap
    assert shifted_2mm["hd95_mm_cell"] == pytest.approx(2 * shifted_1mm["hd95_mm_cell"]) != 0
    assert shifted_2mm["assd_mm_cell"] == pytest.approx(2 * shifted_1mm["assd_mm_cell"]) != 0
    # a class in neither label nor prediction: no distance
    assert all(math.isnan(v) for v in table["hd95_mm_dense_cell"])

