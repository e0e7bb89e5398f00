"""Coarse-grid elastic deformation: one field for all keys, identity at zero sigma, the field is
the cubic-spline zoom of the coarse grid and the warp mirrors at the borders."""

from __future__ import annotations

import numpy as np
import torch

from unet_med.transforms import RandCoarseElasticd


def test_coarse_elastic_moves_all_keys_together_and_identity_at_zero_sigma():
    rng = np.random.default_rng(0)
    lab = torch.as_tensor(rng.integers(0, 3, (1, 40, 40)).repeat(4, 1).repeat(4, 2)[:, :40, :40]).float()
    d = {"image": lab.clone(), "label": lab.clone()}
    t = RandCoarseElasticd(["image", "label"], prob=1.0, sigma=10.0, order=[0, 0])
    t.set_random_state(5)
    out = t(d)
    assert torch.equal(out["image"], out["label"])  # one field for all keys
    assert not torch.equal(out["label"], lab)  # it did deform
    assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0, 2.0}
    still = RandCoarseElasticd(["image"], prob=1.0, sigma=0.0, order=3)(dict(d))
    assert torch.allclose(still["image"], lab, atol=1e-5)


def test_elastic_field_is_the_cubic_spline_zoom_and_the_warp_mirrors():
    from scipy import ndimage

    t = RandCoarseElasticd(["image"], prob=1.0, sigma=10.0, order=1)
    t.set_random_state(3)
    t.randomize(3)
    shape = (40, 30, 20)
    zoomed = [
        ndimage.zoom(c, [s / 3 for s in shape], order=3, mode="nearest", grid_mode=False) for c in t._coarse
    ]
    assert np.allclose(t.displacement(shape), np.stack(zoomed), atol=1e-9)

    img = torch.rand(1, 50, 40)
    t.set_random_state(1)
    out = t({"image": img})["image"]
    t.set_random_state(1)
    t.randomize(2)
    coords = np.stack(np.meshgrid(np.arange(50.0), np.arange(40.0), indexing="ij")) + t.displacement((50, 40))
    expected = ndimage.map_coordinates(img[0].double().numpy(), coords, order=1, mode="mirror")
    assert np.allclose(out[0].numpy(), expected, atol=1e-4)
