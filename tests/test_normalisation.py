"""Intensity normalisation modes of the preprocessing chain: the body-foreground z-score is
independent of the field of view, the dataset CT mode clips and z-scores, old modes unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import CropForegroundd, NormalizeIntensity, Spacingd

from unet_med.transforms import (
    BodyForeground,
    ForegroundNormalizeIntensityd,
    body_foreground_mask,
    preprocessing_transforms,
)


def _body(rng: np.random.Generator, size: int = 20) -> np.ndarray:
    """An MR-like 3D body: two tissues (120 and 220) inside a sphere, no background."""
    grid = np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij")
    r2 = sum(g**2 for g in grid)
    body = np.where(r2 < 0.3, 220.0, 120.0) + rng.normal(0, 5, (size,) * 3)
    return body, r2 < 1.0


def _in_field_of_view(body: np.ndarray, inside: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """The body inside a field of view ``pad`` voxels wider, filled with noisy (non-zero) air."""
    shape = tuple(s + 2 * pad for s in body.shape)
    image = np.abs(rng.normal(0, 6, shape))
    core = tuple(slice(pad, pad + s) for s in body.shape)
    image[core] = np.where(inside, body, image[core])
    return image.astype(np.float32)


def test_body_mask_ignores_noisy_air_that_non_zero_would_count():
    rng = np.random.default_rng(0)
    body, inside = _body(rng)
    image = _in_field_of_view(body, inside, 10, rng)
    mask = body_foreground_mask(image)
    assert (image > 0).mean() > 0.99  # "non-zero" would call nearly everything body
    core = tuple(slice(10, 30) for _ in range(3))
    expected = np.zeros(image.shape, bool)
    expected[core] = inside
    assert (mask != expected).mean() < 0.01
    assert body_foreground_mask(np.full((4, 4), 7.0)).all()  # constant: all foreground


def test_foreground_z_score_is_independent_of_the_background_in_the_field_of_view():
    rng = np.random.default_rng(0)
    body, inside = _body(rng)
    small, large = (_in_field_of_view(body, inside, pad, np.random.default_rng(pad)) for pad in (2, 20))
    norm = ForegroundNormalizeIntensityd("image")
    out_small = np.asarray(norm({"image": MetaTensor(torch.from_numpy(small[None]))})["image"])[0]
    out_large = np.asarray(norm({"image": MetaTensor(torch.from_numpy(large[None]))})["image"])[0]
    body_small = out_small[tuple(slice(2, 22) for _ in range(3))][inside]
    body_large = out_large[tuple(slice(20, 40) for _ in range(3))][inside]
    assert np.allclose(body_small, body_large, atol=0.02)
    assert abs(body_small.mean()) < 0.05 and abs(body_small.std() - 1) < 0.05
    # the whole-image z-score depends on how much air there is: the same body moves by > 1 std
    whole_small = np.asarray(NormalizeIntensity()(small))[tuple(slice(2, 22) for _ in range(3))][inside]
    whole_large = np.asarray(NormalizeIntensity()(large))[tuple(slice(20, 40) for _ in range(3))][inside]
    assert np.abs(whole_small - whole_large).mean() > 1.0


def test_foreground_z_score_is_per_channel_and_keeps_meta():
    rng = np.random.default_rng(1)
    body, inside = _body(rng, 12)
    a = _in_field_of_view(body, inside, 4, rng)
    image = MetaTensor(
        torch.from_numpy(np.stack([a, 10 * a + 5])), affine=torch.diag(torch.tensor([2.0, 2, 2, 1]))
    )
    out = ForegroundNormalizeIntensityd("image")({"image": image})["image"]
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, image.affine)
    assert torch.allclose(out[0], out[1], atol=1e-4)  # a linear rescale of a channel changes nothing


def _ct(rng: np.random.Generator) -> np.ndarray:
    image = np.full((16, 16, 8), -1000.0)
    image[3:13, 3:13] = rng.normal(60, 40, (10, 10, 8))
    image[7:9, 7:9] = 900.0  # bone above the clip range
    return image.astype(np.float32)


def test_ct_dataset_mode_clips_to_the_dataset_range_and_z_scores_with_its_statistics():
    image = _ct(np.random.default_rng(0))
    chain = preprocessing_transforms(
        ["image"], load=False, axcodes=None, intensity="ct_dataset",
        intensity_clip=[-100.0, 300.0], intensity_mean=60.0, intensity_std=40.0,
    )  # fmt: skip
    out = np.asarray(chain({"image": MetaTensor(torch.from_numpy(image[None]))})["image"])[0]
    expected = (np.clip(image, -100, 300) - 60) / 40
    assert np.allclose(out, expected, atol=1e-5)
    assert out.min() == pytest.approx(-4.0) and out.max() == pytest.approx(6.0)
    with pytest.raises(ValueError, match=r"missing \['intensity_mean', 'intensity_std'\]"):
        preprocessing_transforms(["image"], load=False, intensity="ct_dataset", intensity_clip=[0, 1])
    with pytest.raises(ValueError, match="low < high"):
        preprocessing_transforms(
            ["image"],
            load=False,
            intensity="ct_dataset",
            intensity_clip=[5, 1],
            intensity_mean=0,
            intensity_std=1,
        )


def test_old_modes_are_unchanged_and_unknown_modes_are_refused():
    image = _ct(np.random.default_rng(0))
    data = {"image": MetaTensor(torch.from_numpy(image[None]))}
    ct = preprocessing_transforms(["image"], load=False, axcodes=None, intensity="ct", window=(-1000, 1000))
    assert np.allclose(
        np.asarray(ct(dict(data))["image"])[0], np.clip((image + 1000) / 2000, 0, 1), atol=1e-6
    )
    with pytest.raises(ValueError, match="intensity must be one of"):
        preprocessing_transforms(["image"], load=False, intensity="zscore")


def test_zscore_foreground_mode_crops_to_the_body_and_resamples_with_the_given_orders():
    rng = np.random.default_rng(0)
    body, inside = _body(rng, 12)
    image = _in_field_of_view(body, inside, 6, rng)
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
