"""Transform chains: border weight map, valid-convolution patch pairs, elastic deformation, inversion."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from unet_med.data.writing import save_nifti
from unet_med.transforms import (
    BorderWeightMapd,
    RandCoarseElasticd,
    border_weight_map,
    class_balance_weights,
    inference_transforms,
    prediction_inversion_transforms,
    preprocessing_transforms,
    training_transforms,
    valid_patch_margin,
)


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


def test_valid_patch_margin_rejects_uncentred_sizes():
    assert valid_patch_margin((188, 188), (4, 4)) == (92, 92)
    with pytest.raises(ValueError, match="cannot be centred"):
        valid_patch_margin((100, 100), (51, 51))


def _scan(tmp_path, ndim: int):
    rng = np.random.default_rng(0)
    shape = (40, 36) if ndim == 2 else (30, 28, 16)
    label = np.zeros(shape, np.uint8)
    label[tuple(slice(s // 4, s // 2) for s in shape)] = 1
    label[tuple(slice(s // 2, 3 * s // 4) for s in shape)] = 2
    image = label * 100 + rng.integers(0, 50, shape)  # the label is readable from the image
    affine = np.array([[0.0, -0.7, 0, 10], [0.9, 0, 0, -5], [0, 0, 2.0, 3], [0, 0, 0, 1]])
    return {
        "image": str(save_nifti(image.astype(np.int16), affine, tmp_path / "img.nii.gz")),
        "label": str(save_nifti(label, affine, tmp_path / "lab.nii.gz")),
    }


@pytest.mark.parametrize("ndim,inp,out", [(2, (64, 60), (20, 16)), (3, (36, 36, 20), (12, 12, 4))])
def test_valid_conv_patch_pairs_sizes_and_centre_alignment(tmp_path, ndim, inp, out):
    item = _scan(tmp_path, ndim)
    chain = training_transforms(
        input_patch_size=inp,
        output_patch_size=out,
        num_samples=3,
        pos=1,
        neg=1,
        intensity="none",
        axcodes=None,
        elastic_prob=0,
        rotate_prob=0,
        shift_prob=0,
        intensity_prob=0,
    )
    chain.set_random_state(1)
    samples = chain(item)
    margin = np.array(valid_patch_margin(inp, out))
    assert len(samples) == 3
    for s in samples:
        assert tuple(s["image"].shape) == (1, *inp)
        assert tuple(s["label"].shape) == tuple(s["weight"].shape) == (1, *out)
        # The centre crop of the image patch carries exactly the label patch (image = 100*label + noise).
        centre = s["image"][(0,) + tuple(slice(m, m + o) for m, o in zip(margin, out))]
        assert torch.equal(torch.div(centre, 100, rounding_mode="floor"), s["label"][0])
        # Label voxel 0 and image voxel `margin` are the same world point.
        hom = np.r_[margin, 1.0] if ndim == 3 else np.r_[margin, 0.0, 1.0]
        zero = np.r_[np.zeros(3), 1.0]
        img_affine, lab_affine = np.asarray(s["image"].affine), np.asarray(s["label"].affine)
        assert np.allclose(img_affine @ hom, lab_affine @ zero, atol=1e-5)


def test_training_patches_with_augmentation_keep_label_values_and_shapes(tmp_path):
    item = _scan(tmp_path, 2)
    chain = training_transforms(
        input_patch_size=(64, 60),
        output_patch_size=(20, 16),
        num_samples=2,
        intensity="ct",
        window=(0, 300),
        axcodes="RAS",
        elastic_prob=1.0,
        rotate_prob=1.0,
        shift_prob=1.0,
        intensity_prob=1.0,
    )
    chain.set_random_state(3)
    for s in chain(item):
        assert tuple(s["image"].shape) == (1, 64, 60) and tuple(s["label"].shape) == (1, 20, 16)
        assert set(torch.unique(s["label"]).tolist()) <= {0.0, 1.0, 2.0}
        assert float(s["weight"].min()) > 0


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


def test_ct_window_scaling():
    img = MetaTensor(torch.tensor([[[-2000.0, -1000.0, 0.0, 1000.0, 3000.0]]]))
    out = preprocessing_transforms(["image"], load=False, axcodes=None, window=(-1000, 1000))({"image": img})
    assert torch.allclose(out["image"], torch.tensor([[[0.0, 0.0, 0.5, 1.0, 1.0]]]))


@pytest.mark.parametrize("spacing,min_dice", [(None, 1.0), ((1.0, 1.0, 1.0), 0.9)])
def test_inference_chain_inverts_to_the_input_geometry(tmp_path, spacing, min_dice):
    shape = (30, 26, 12)
    vol = np.full(shape, -1000, np.int16)
    vol[5:25, 4:22, 2:10] = 200  # the "body"; the rest is air, cropped away by the foreground crop
    affine = np.array([[-0.8, 0, 0, 40], [0, 0, 1.1, -30], [0, 0.9, 0, 5], [0, 0, 0, 1]])  # not RAS
    path = save_nifti(vol, affine, tmp_path / "ct.nii.gz")
    pre = inference_transforms(spacing=spacing, crop_foreground=True, foreground_margin=1)
    data = pre({"image": str(path)})
    assert tuple(data["image"].shape[1:]) != shape
    # A plain tensor, as an inferer returns; threshold halfway between air (0) and body (0.6).
    data["pred"] = (data["image"].as_tensor() > 0.3).float()
    pred = prediction_inversion_transforms(pre)(data)["pred"]
    assert tuple(pred.shape) == (1, *shape)
    assert np.allclose(np.asarray(pred.affine), affine, atol=1e-5)
    truth = vol > 0
    got = pred[0].numpy() > 0.5
    dice = 2 * (truth & got).sum() / (truth.sum() + got.sum())
    assert dice >= min_dice


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
