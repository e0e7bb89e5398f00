"""The bundle's post-processing chain (largest component, hole filling) and the safety net that
brings a label map back to the scan's grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import AsDiscrete

from unet_med.inference.postprocessing import channel_argmax, postprocessing_transforms, to_input_geometry


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


def test_channel_argmax_is_monai_argmax_with_ties_to_the_first_class_and_the_metadata_kept():
    torch.manual_seed(0)
    logits = torch.randn(3, 9, 8, 7).round()  # rounded: many ties between classes
    logits[:, 0, 0, 0] = 2.0  # a three-way tie -> class 0
    logits[0, 1, 0, 0], logits[1:, 1, 0, 0] = 0.0, 1.0  # a tie of classes 1 and 2 -> class 1
    image = MetaTensor(logits, affine=torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0])))
    image.applied_operations = [{"class": "Spacing", "id": 1}]
    got, expected = channel_argmax(image), AsDiscrete(argmax=True)(image)
    assert isinstance(got, MetaTensor) and got.dtype == torch.float32 and got.shape == (1, 9, 8, 7)
    assert torch.equal(got.as_tensor(), expected.as_tensor())
    assert got[0, 0, 0, 0] == 0 and got[0, 1, 0, 0] == 1
    torch.testing.assert_close(got.affine, image.affine)
    assert got.applied_operations == expected.applied_operations == image.applied_operations
    as_array = channel_argmax(logits.numpy())
    assert isinstance(as_array, np.ndarray) and np.array_equal(as_array, expected.numpy())
