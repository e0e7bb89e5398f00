"""The U-Net's blocks: the centre crop and crop-and-concatenate (the grey arrow of Fig. 1)."""

from __future__ import annotations

import torch

from unet_med.networks.blocks import CropAndConcat, center_crop


def test_center_crop_keeps_the_centre() -> None:
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    cropped = center_crop(x, [2, 4])
    assert torch.equal(cropped[0, 0], x[0, 0, 2:4, 1:5])


def test_crop_and_concat_crops_the_skip_to_the_decoder_size_centred() -> None:
    skip = torch.arange(2 * 8 * 8 * 6, dtype=torch.float32).reshape(1, 2, 8, 8, 6)
    up = torch.full((1, 3, 4, 4, 2), -1.0)
    merged = CropAndConcat()(skip, up)
    assert merged.shape == (1, 5, 4, 4, 2)
    assert torch.equal(merged[:, :2], skip[:, :, 2:6, 2:6, 2:4])
    assert torch.equal(merged[:, 2:], up)
