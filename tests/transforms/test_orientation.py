"""SpatialOrientationd: the same reorientation as MONAI's Orientationd, and a 2D inverse that
gives back the original array without MONAI's "axcodes ... length is smaller" warning."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Orientationd

from unet_med.transforms.orientation import RAS_LABELS, SpatialOrientationd


def test_2d_round_trip_is_exact_and_silent():
    affine = np.diag([-0.7, -0.7, 1.0, 1.0])  # LPS-like in-plane axes: reorientation flips both
    image = MetaTensor(torch.arange(12.0).reshape(1, 3, 4), affine=torch.as_tensor(affine))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        transform = SpatialOrientationd("image", axcodes="RA")
        oriented = transform({"image": image})
        back = transform.inverse(oriented)["image"]
    expected = Orientationd("image", axcodes="RA", labels=RAS_LABELS)({"image": image})["image"]
    assert torch.equal(oriented["image"], expected)
    assert not torch.equal(oriented["image"], image)  # it did flip
    assert torch.equal(back.as_tensor(), image.as_tensor())
    np.testing.assert_allclose(back.affine.numpy(), affine)
