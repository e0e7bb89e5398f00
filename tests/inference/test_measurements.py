"""Per-label measurements for ``--statistics``: intensity mean/std inside each label on the scan's
own intensities, connected components with full connectivity, empty labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from unet_med.inference.measurements import label_statistics, statistics_columns

LABELS = {0: "background", 1: "Liver", 2: "liver tumour"}


def test_planted_labels_give_their_mean_std_and_component_count():
    image = np.full((12, 10, 6), -1000.0)  # air, HU
    labels = np.zeros(image.shape, np.uint8)
    labels[1:4, 1:4, 1:3] = 1  # component 1: 18 voxels at 50 HU
    image[1:4, 1:4, 1:3] = 50.0
    labels[8:10, 6:9, 3:5] = 1  # component 2: 12 voxels at 80 HU
    image[8:10, 6:9, 3:5] = 80.0
    labels[5, 5, 5] = 1  # a third component, apart from the other two
    image[5, 5, 5] = 110.0
    labels[6, 6, 4] = 1  # diagonal neighbour of (5, 5, 5): the same component (26-connectivity)
    image[6, 6, 4] = 110.0
    values = np.array([50.0] * 18 + [80.0] * 12 + [110.0] * 2)
    got = label_statistics(labels, image, LABELS)
    assert set(got) == set(statistics_columns(LABELS))
    assert got["components_liver"] == 3
    assert got["intensity_mean_liver"] == pytest.approx(values.mean())
    assert got["intensity_std_liver"] == pytest.approx(values.std())
    # a label with no voxel: no intensity, no component
    assert got["components_liver_tumour"] == 0
    assert math.isnan(got["intensity_mean_liver_tumour"]) and math.isnan(got["intensity_std_liver_tumour"])


def test_2d_components_count_diagonal_neighbours_and_shapes_must_match():
    labels = np.zeros((5, 5), np.uint8)
    labels[0, 0] = labels[1, 1] = 2  # diagonal: one component with 8-connectivity
    labels[4, 4] = 2
    got = label_statistics(labels, np.arange(25.0).reshape(5, 5), LABELS)
    assert got["components_liver_tumour"] == 2
    assert got["intensity_mean_liver_tumour"] == pytest.approx((0 + 6 + 24) / 3)
    with pytest.raises(ValueError, match=r"\(5, 5\).*\(5, 4\)"):
        label_statistics(labels, np.zeros((5, 4)), LABELS)
