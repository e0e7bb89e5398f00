"""The bundle's post-processing chain (largest component, hole filling) and the safety net that
brings a label map back to the scan's grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from unet_med.inference.postprocessing import postprocessing_transforms, to_input_geometry


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
