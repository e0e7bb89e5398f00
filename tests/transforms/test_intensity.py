"""Intensity normalisation: the body-foreground z-score is independent of the field of view, the
CT window scales to [0, 1], the dataset CT mode clips and z-scores, old modes unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import NormalizeIntensity

from unet_med.transforms import ForegroundNormalizeIntensityd, body_foreground_mask, preprocessing_transforms


def test_body_mask_ignores_noisy_air_that_non_zero_would_count(mr_body, in_field_of_view):
    rng = np.random.default_rng(0)
    body, inside = mr_body(rng)
    image = in_field_of_view(body, inside, 10, rng)
    mask = body_foreground_mask(image)
    assert (image > 0).mean() > 0.99  # "non-zero" would call nearly everything body
    core = tuple(slice(10, 30) for _ in range(3))
    expected = np.zeros(image.shape, bool)
    expected[core] = inside
    assert (mask != expected).mean() < 0.01
    assert body_foreground_mask(np.full((4, 4), 7.0)).all()  # constant: all foreground


def test_foreground_z_score_is_independent_of_the_background_in_the_field_of_view(mr_body, in_field_of_view):
    rng = np.random.default_rng(0)
    body, inside = mr_body(rng)
    small, large = (in_field_of_view(body, inside, pad, np.random.default_rng(pad)) for pad in (2, 20))
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


def test_foreground_z_score_is_per_channel_and_keeps_meta(mr_body, in_field_of_view):
    rng = np.random.default_rng(1)
    body, inside = mr_body(rng, 12)
    a = in_field_of_view(body, inside, 4, rng)
    image = MetaTensor(
        torch.from_numpy(np.stack([a, 10 * a + 5])), affine=torch.diag(torch.tensor([2.0, 2, 2, 1]))
    )
    out = ForegroundNormalizeIntensityd("image")({"image": image})["image"]
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, image.affine)
    assert torch.allclose(out[0], out[1], atol=1e-4)  # a linear rescale of a channel changes nothing


def test_ct_window_scaling():
    img = MetaTensor(torch.tensor([[[-2000.0, -1000.0, 0.0, 1000.0, 3000.0]]]))
    out = preprocessing_transforms(["image"], load=False, axcodes=None, window=(-1000, 1000))({"image": img})
    assert torch.allclose(out["image"], torch.tensor([[[0.0, 0.0, 0.5, 1.0, 1.0]]]))


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
