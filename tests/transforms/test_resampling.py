"""AxisAlignedSpacingd: MONAI's Spacingd computed per axis: the same values, geometry, recorded
operation and inversion as MONAI's, without a sampling grid where the grids are axis-aligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, Spacingd

from unet_med.transforms.resampling import AxisAlignedSpacingd


def _rotated_affine(spacing, angle_deg: float = 10.0) -> torch.Tensor:
    """A scan's RAS affine: rotated about z (its grid is not the world's), anisotropic voxels."""
    t = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = (-20.0, 13.0, 5.0)
    return torch.as_tensor(affine)


def _image(shape=(1, 23, 19, 11), spacing=(0.7, 0.7, 2.5), seed=0) -> MetaTensor:
    torch.manual_seed(seed)
    return MetaTensor(torch.randn(*shape) * 100, affine=_rotated_affine(spacing))


def _no_sampling_grid(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a sampling grid was built")

    monkeypatch.setattr(torch.nn.functional, "affine_grid", refuse)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("pixdim", [(0.8, 0.9, 2.0), (1.5, 0.5, 3.1)])
def test_linear_resampling_equals_monai_without_a_sampling_grid(monkeypatch, pixdim, align_corners):
    image = _image()
    kwargs = dict(pixdim=pixdim, mode="bilinear", align_corners=align_corners)
    want = Spacingd("image", **kwargs)({"image": image})["image"]
    _no_sampling_grid(monkeypatch)
    got = AxisAlignedSpacingd("image", **kwargs)({"image": image})["image"]
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.as_tensor(), want.as_tensor(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got.affine, want.affine)
    (op,), (monai_op,) = got.applied_operations, want.applied_operations
    assert op["orig_size"] == monai_op["orig_size"]
    assert {k: v for k, v in op["extra_info"].items() if k != "src_affine"} == {
        k: v for k, v in monai_op["extra_info"].items() if k != "src_affine"
    }


def test_2d_images_resample_like_monai(monkeypatch):
    image = MetaTensor(torch.randn(2, 31, 17), affine=_rotated_affine((0.6, 0.6, 1.0)))
    expected = Spacingd("image", pixdim=(1.0, 0.45), mode="bilinear")({"image": image})["image"]
    _no_sampling_grid(monkeypatch)
    got = AxisAlignedSpacingd("image", pixdim=(1.0, 0.45), mode="bilinear")({"image": image})["image"]
    assert got.shape == expected.shape
    torch.testing.assert_close(got.as_tensor(), expected.as_tensor(), rtol=1e-5, atol=1e-4)


def test_label_maps_and_their_inversion_equal_monais_voxel_for_voxel(monkeypatch):
    image = _image(seed=1)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in image.shape[1:]], indexing="ij")
    ball = sum(g**2 for g in grid)
    classes = torch.as_tensor((ball < 0.6) + (ball < 0.2), dtype=torch.float32)[None]
    labels = MetaTensor(classes, affine=image.affine)
    data = {"image": image, "label": labels}
    kwargs = dict(pixdim=(0.83, 0.83, 2.1), mode=("bilinear", "nearest"))  # no sample lies halfway
    monai_chain = Compose([Spacingd(["image", "label"], **kwargs)])
    our_chain = Compose([AxisAlignedSpacingd(["image", "label"], **kwargs)])
    expected = monai_chain(dict(data))
    monai_back = Invertd("pred", transform=monai_chain, orig_keys="image", nearest_interp=True)(
        {**expected, "pred": expected["label"].clone()}
    )["pred"]
    _no_sampling_grid(monkeypatch)
    got = our_chain(dict(data))
    assert torch.equal(got["label"].as_tensor(), expected["label"].as_tensor())
    # a prediction on the resampled grid goes back to the scan's grid (nearest neighbour)
    back = Invertd("pred", transform=our_chain, orig_keys="image", nearest_interp=True)(
        {**got, "pred": got["label"].clone()}
    )["pred"]
    assert back.shape == image.shape
    assert torch.equal(back.as_tensor(), monai_back.as_tensor())
    torch.testing.assert_close(back.affine, image.affine)
    assert np.mean(back.numpy() == labels.numpy()) > 0.95  # the round trip keeps the shapes


def test_halfway_samples_and_rotated_grids_are_left_to_monai():
    # spacing 0.35 from 0.7: every other output voxel samples halfway between two input voxels
    image = _image(spacing=(0.7, 0.7, 2.5), seed=2)
    labels = MetaTensor((image.as_tensor() > 0).float(), affine=image.affine)
    halfway = dict(pixdim=(0.35, 0.35, 2.5), mode="nearest")
    rotated = dict(pixdim=(1.0, 1.0, 2.5), diagonal=True)  # resampled onto the world's axes
    for kwargs in (halfway, rotated):
        expected = Spacingd("label", **kwargs)({"label": labels})["label"]
        got = AxisAlignedSpacingd("label", **kwargs)({"label": labels})["label"]
        assert got.shape == expected.shape
        assert torch.equal(got.as_tensor(), expected.as_tensor())
        torch.testing.assert_close(got.affine, expected.affine)
