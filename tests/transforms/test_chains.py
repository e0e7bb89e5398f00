"""Transform chains: valid-convolution patch pairs (sizes, centre alignment), training
augmentations keep label values, the inference chain inverts to the input geometry, the
foreground crop and resampling orders of the preprocessing chain."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import CropForegroundd, Spacingd

from unet_med.data.writing import save_nifti
from unet_med.transforms import (
    BodyForeground,
    inference_transforms,
    prediction_inversion_transforms,
    preprocessing_transforms,
    training_transforms,
    valid_patch_margin,
)


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


def test_zscore_foreground_mode_crops_to_the_body_and_resamples_with_the_given_orders(
    mr_body, in_field_of_view
):
    rng = np.random.default_rng(0)
    body, inside = mr_body(rng, 12)
    image = in_field_of_view(body, inside, 6, rng)
    label = np.zeros(image.shape, np.float32)
    label[10:14, 10:14, 10:14] = 2
    affine = torch.eye(4)
    data = {
        "image": MetaTensor(torch.from_numpy(image[None]), affine=affine),
        "label": MetaTensor(torch.from_numpy(label[None]), affine=affine),
    }
    chain = preprocessing_transforms(
        ["image", "label"], load=False, axcodes=None, spacing=(2.0, 2.0, 2.0), intensity="zscore_foreground",
        crop_foreground=True,
    )  # fmt: skip
    crops = [t for t in chain.transforms if isinstance(t, CropForegroundd)]
    assert len(crops) == 1 and isinstance(crops[0].cropper.select_fn, BodyForeground)
    out = chain(data)
    # the 12-voxel body resampled to 2 mm (about 6 voxels), the 6 voxels of noisy air around it cropped
    assert all(5 <= s <= 7 for s in out["image"].shape[1:])
    assert set(np.unique(np.asarray(out["label"]))) <= {0.0, 2.0}  # nearest neighbour keeps classes
    spacing = next(t for t in chain.transforms if isinstance(t, Spacingd))
    assert spacing.mode == ("bilinear", "nearest")  # orders 1 and 0, today's modes
    cubic = preprocessing_transforms(
        ["image", "label"], load=False, axcodes=None, spacing=(2.0, 2.0, 2.0), resample_order_image=3
    )
    assert next(t for t in cubic.transforms if isinstance(t, Spacingd)).mode == (3, "nearest")
    assert cubic(data)["image"].shape[1:] == (12, 12, 12)
    with pytest.raises(ValueError, match="resample_order_label must be a spline order"):
        preprocessing_transforms(["image"], load=False, resample_order_label=7)


def test_foreground_patches_are_split_evenly_over_the_foreground_classes(tmp_path):
    """nnU-Net's oversampling picks a foreground class, then a voxel of it: a lesion of a few
    voxels beside a large organ is the centre of as many patches as the organ."""
    from unet_med.data.writing import save_nifti

    label = np.zeros((40, 40, 12), dtype=np.uint8)
    label[5:35, 5:35, 2:10] = 1  # organ: 7200 voxels
    label[18:20, 18:20, 5:7] = 2  # lesion: 8 voxels, 0.1% of the foreground
    image = (100.0 * label).astype(np.float32)
    item = {
        "image": str(save_nifti(image, np.eye(4), tmp_path / "img.nii.gz")),
        "label": str(save_nifti(label, np.eye(4), tmp_path / "lab.nii.gz")),
    }
    common = dict(input_patch_size=(1, 1, 1), num_samples=600, pos=1, neg=2, weight_map=False,
                  intensity="none", axcodes=None, elastic_prob=0, rotate_prob=0, shift_prob=0,
                  intensity_prob=0)  # fmt: skip
    centres = {}
    for classes in (3, None):
        chain = training_transforms(num_classes=classes, **common)
        chain.set_random_state(0)
        values = np.array([int(s["label"].flatten()[0]) for s in chain(item)])
        centres[classes] = {c: float(np.mean(values == c)) for c in (0, 1, 2)}
    assert centres[3][2] == pytest.approx(1 / 6, abs=0.05)  # a sixth of the patches on the lesion
    assert centres[3][1] == pytest.approx(1 / 6, abs=0.05) and centres[3][0] == pytest.approx(2 / 3, abs=0.06)
    assert centres[None][2] < 0.01  # foreground as one class: the lesion in proportion to its volume
