"""The paper's border weight map: the ridge between touching objects weighs more, far background
and object interiors carry the class weight only, instances separate touching cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from unet_med.transforms import BorderWeightMapd, border_weight_map, class_balance_weights


def two_squares(ndim: int = 2, size: int = 48, gap: int = 2) -> np.ndarray:
    """Two 10-voxel squares/cubes of class 1 separated by a ``gap``-voxel background ridge."""
    label = np.zeros((size,) * ndim, np.uint8)
    lo, hi = 8, 18
    a = tuple(slice(lo, hi) for _ in range(ndim))
    b = (slice(hi + gap, hi + gap + 10),) + a[1:]
    label[a] = 1
    label[b] = 1
    return label


@pytest.mark.parametrize("ndim", [2, 3])
def test_border_weight_map_ridge_and_far_background(ndim):
    label = two_squares(ndim)
    wc = class_balance_weights(label)
    w = border_weight_map(label, w0=10, sigma=5)
    ridge = (19,) + (12,) * (ndim - 1)  # second gap voxel between the objects: d1 = 1, d2 = 2
    assert w[ridge] > 10 / 2
    assert w[ridge] == pytest.approx(wc[0] + 10 * np.exp(-((1 + 2) ** 2) / 50), rel=1e-4)
    far = (45,) * ndim  # far from both objects
    assert w[far] == pytest.approx(wc[0], abs=1e-3)
    inside = (12,) * ndim
    assert w[inside] == pytest.approx(wc[1])
    assert wc[1] > wc[0]  # the rarer foreground weighs more
    # A lone object gets no border term.
    single = label.copy()
    single[(slice(20, None),) + (slice(None),) * (ndim - 1)] = 0
    assert np.allclose(border_weight_map(single, class_weights=None), 1.0)


def test_border_weight_map_from_instances_separates_touching_objects():
    label = np.zeros((40, 40), np.uint8)
    label[10:20, 10:30] = 1  # one class region ...
    inst = np.zeros_like(label, np.int32)
    inst[10:20, 10:20], inst[10:20, 20:30] = 1, 2  # ... made of two touching cells
    d = {"label": MetaTensor(torch.as_tensor(label[None]).float()), "inst": torch.as_tensor(inst[None])}
    out = BorderWeightMapd("label", instance_key="inst", class_weights=None)(d)
    w = out["weight"]
    assert isinstance(w, MetaTensor) and w.shape == (1, 40, 40)
    assert w[0, 9, 20] > w[0, 9, 5] + 4  # background just above the contact line: near both cells
    assert float(w[0, 15, 15]) == 1.0  # inside: class weight only
