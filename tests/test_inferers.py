"""OverlapTileInferer: tiled prediction == one pass over the whole mirror-padded image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.networks.nets import BasicUNet

import unet_med.inferers as inferers
from unet_med.inferers import OverlapTileInferer, default_memory_budget_mb, mirror_indices
from unet_med.networks import UNet, min_input_size


def _net(dims: int, out_channels: int = 3, padding: str = "valid", widths=(4, 8, 16)) -> UNet:
    torch.manual_seed(0)
    net = UNet(dims, 2, out_channels, widths=widths, padding=padding, norm="none")
    return net.eval()


def _one_pass(net: UNet, image: torch.Tensor) -> torch.Tensor:
    """Whole image in one pass: mirror-pad by the margin (numpy's reflect, an independent
    implementation), extend the far end to a legal size, predict, keep the image's extent."""
    spatial = image.shape[2:]
    margin = net.margin()
    legal = min_input_size(tuple(spatial), net.spec)
    pads = [(0, 0), (0, 0)] + [(m, s - n - m) for m, s, n in zip(margin, legal, spatial)]
    padded = torch.from_numpy(np.pad(image.numpy(), pads, mode="reflect"))
    with torch.no_grad():
        out = net(padded)
    return out[(slice(None), slice(None), *(slice(0, n) for n in spatial))]


@pytest.mark.parametrize(
    "dims, size, tile, overlap, blend",
    [
        (2, (37, 29), 8, 0.0, "constant"),
        (2, (37, 29), (12, 5), 0.5, "gaussian"),
        (2, (41, 23), 16, 0.25, "constant"),
        (3, (13, 11, 9), 4, 0.0, "constant"),
        (3, (13, 11, 9), (8, 4, 4), 0.5, "gaussian"),
    ],
)
def test_tiled_equals_one_pass_on_mirror_padded_image(dims, size, tile, overlap, blend):
    net = _net(dims, widths=(4, 8, 16) if dims == 2 else (2, 4, 8))
    image = torch.randn(2, 2, *size)
    inferer = OverlapTileInferer(tile, overlap=overlap, blend_mode=blend, sw_batch_size=3)
    plan = inferer.plan(size, net)
    assert plan.num_tiles > 1, "the test must actually tile"
    assert all(s % 4 == 0 for s in plan.stride)  # steps on the pooling grid (2 poolings)
    got = inferer(image, net)
    assert got.shape == (2, 3, *size)
    torch.testing.assert_close(got, _one_pass(net, image), rtol=1e-4, atol=1e-5)


def test_abutting_tiles_cover_image_without_overlap():
    net = _net(2)
    plan = OverlapTileInferer(20).plan((50, 21), net)
    # 20 -> output 20 (legal), a step of 20 is on the 4-voxel pooling grid: tiles abut exactly
    assert plan.output_tile == (20, 20)
    assert plan.input_tile == (60, 60)
    assert plan.stride == (20, 20)
    assert plan.starts == ((0, 20, 40), (0, 20))


def test_mirror_indices_match_numpy_pad_even_for_pads_longer_than_the_axis():
    data = np.arange(5)
    for mode, np_mode in [("reflect", "reflect"), ("symmetric", "symmetric"), ("replicate", "edge")]:
        idx = mirror_indices(5, -13, 5 + 13 + 11, mode).numpy()
        np.testing.assert_array_equal(data[idx], np.pad(data, (13, 11), mode=np_mode))
    assert mirror_indices(1, -3, 7).tolist() == [0] * 7


def test_image_shorter_than_margin_is_mirrored_repeatedly():
    net = _net(2)
    image = torch.randn(1, 2, 3, 30)  # axis 0 (3 voxels) is far shorter than the margin (20)
    got = OverlapTileInferer(8)(image, net)
    torch.testing.assert_close(got, _one_pass(net, image), rtol=1e-4, atol=1e-5)


def test_same_padding_network_behaves_like_a_sliding_window():
    net = _net(2, padding="same")
    image = torch.randn(1, 2, 32, 24)
    whole = OverlapTileInferer(None)(image, net)
    with torch.no_grad():
        torch.testing.assert_close(whole, net(image))
        tiled = OverlapTileInferer(8)(image, net)
        assert tiled.shape == (1, 3, 32, 24)
        # each abutting tile is the network applied to that crop alone (margin 0)
        torch.testing.assert_close(tiled[..., 8:16, 16:24], net(image[..., 8:16, 16:24]))
        assert not torch.allclose(tiled, whole, atol=1e-4)  # zero-padded tile borders differ


def test_networks_without_spec_use_margin_zero():
    torch.manual_seed(0)
    net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=(4, 4, 8, 8, 16, 4)).eval()
    image = torch.randn(1, 1, 48, 40)
    inferer = OverlapTileInferer(32, overlap=0.5, blend_mode="gaussian")
    assert inferer.plan((48, 40), net).margin == (0, 0)
    assert inferer(image, net).shape == (1, 2, 48, 40)


def test_flip_tta_is_the_mean_of_flipped_predictions():
    net = _net(2)
    image = torch.randn(1, 2, 12, 12)
    plain = OverlapTileInferer(None)
    tta = OverlapTileInferer(None, tta_flips=True)
    got = tta(image, net)
    assert got.shape == (1, 3, 12, 12)
    # single tile: mirror-padded tile of 52 (legal), flips of the tile, flipped back, averaged
    tile = torch.from_numpy(np.pad(image.numpy(), [(0, 0), (0, 0), (20, 20), (20, 20)], mode="reflect"))
    with torch.no_grad():
        expected = sum(net(tile.flip(d)).flip(d) for d in ([], [2], [3], [2, 3])) / 4
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, plain(image, net), atol=1e-4)
    # a network that commutes with flips (1x1 convolutions) is unchanged by TTA
    pointwise = torch.nn.Conv2d(2, 3, 1)
    torch.testing.assert_close(tta(image, pointwise), plain(image, pointwise))


def test_metatensor_meta_kept_and_devices_respected():
    net = _net(2)
    image = MetaTensor(torch.randn(1, 2, 16, 16), affine=torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0])))
    got = OverlapTileInferer(8, sw_device="cpu", device="cpu")(image, net)
    assert isinstance(got, MetaTensor)
    torch.testing.assert_close(got.affine, image.affine)
    assert got.device.type == "cpu"


def test_memory_budget_limits_the_tile():
    net = _net(3, widths=(2, 4, 8))
    small = OverlapTileInferer(memory_budget_mb=2).plan((64, 64, 64), net, in_channels=2)
    large = OverlapTileInferer(memory_budget_mb=200).plan((64, 64, 64), net, in_channels=2)
    assert np.prod(small.output_tile) < np.prod(large.output_tile)
    assert small.num_tiles > large.num_tiles
    assert large.output_tile == (64, 64, 64)  # the whole image fits in 200 MiB


@pytest.mark.parametrize("dims, size", [(2, (37, 29)), (3, (13, 11, 9))])
def test_channels_last_and_autocast_keep_the_prediction(dims, size):
    net = _net(dims, widths=(4, 8, 16) if dims == 2 else (2, 4, 8))
    image = torch.randn(1, 2, *size)
    reference = OverlapTileInferer(8)(image, net)
    # channels-last windows: the same arithmetic in another memory layout
    channels_last = OverlapTileInferer(8, channels_last=True)(image, net)
    torch.testing.assert_close(channels_last, reference, rtol=1e-4, atol=1e-5)
    # bfloat16 autocast: logits stitched in float32, close to the float32 ones, still tiling-exact
    mixed = OverlapTileInferer(8, precision="bfloat16")(image, net)
    assert mixed.dtype == torch.float32
    assert (mixed - reference).abs().max() < 0.1 * reference.abs().max()
    whole = OverlapTileInferer(None, precision="bfloat16")(image, net)
    assert (mixed.argmax(1) == whole.argmax(1)).float().mean() > 0.98


def test_tiled_equals_one_pass_with_channels_last_weights():
    # batch inference on the CPU runs 3D U-Nets with channels-last weights (cpu_tuning)
    net = _net(3, widths=(2, 4, 8)).to(memory_format=torch.channels_last_3d)
    image = torch.randn(1, 2, 13, 11, 9)
    inferer = OverlapTileInferer((8, 4, 4))
    assert inferer.plan((13, 11, 9), net).num_tiles > 1
    torch.testing.assert_close(inferer(image, net), _one_pass(net, image), rtol=1e-4, atol=1e-5)


def test_default_budget_on_the_cpu_follows_the_available_memory_within_bounds(monkeypatch):
    monkeypatch.setattr(inferers, "available_memory_mb", lambda: 4096.0)
    assert default_memory_budget_mb("cpu") == 1024  # an eighth would be 512: never below 1024
    monkeypatch.setattr(inferers, "available_memory_mb", lambda: 12 * 1024.0)
    assert default_memory_budget_mb("cpu") == 1536
    monkeypatch.setattr(inferers, "available_memory_mb", lambda: 64 * 1024.0)
    assert default_memory_budget_mb("cpu") == 2048 == default_memory_budget_mb(None)
    assert default_memory_budget_mb("meta") == 1024  # devices other than the CPU and CUDA
    monkeypatch.setattr(inferers, "available_memory_mb", lambda: None)
    assert default_memory_budget_mb("cpu") == 1024


def test_default_budget_grows_only_where_larger_tiles_save_enough_compute(monkeypatch):
    net = _net(3, widths=(2, 4, 8))
    # scaled down: 2 MiB is the default, 200 MiB what the machine allows (the whole 64^3 image)
    monkeypatch.setattr(inferers, "DEFAULT_MEMORY_BUDGET_MB", 2.0)
    monkeypatch.setattr(inferers, "default_memory_budget_mb", lambda device=None: 200.0)
    small = OverlapTileInferer(memory_budget_mb=2).plan((64, 64, 64), net, in_channels=2)
    large = OverlapTileInferer(memory_budget_mb=200).plan((64, 64, 64), net, in_channels=2)
    assert large.num_tiles < small.num_tiles
    assert OverlapTileInferer().plan((64, 64, 64), net, in_channels=2) == large
    # the same image where the larger tiles would not cut the predicted voxels by the required share
    monkeypatch.setattr(inferers, "MIN_VOXEL_SAVING", 0.999)
    assert OverlapTileInferer().plan((64, 64, 64), net, in_channels=2) == small


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="precision"):
        OverlapTileInferer(8, precision="int8")
    with pytest.raises(ValueError, match="overlap"):
        OverlapTileInferer(8, overlap=1.0)
    with pytest.raises(ValueError, match="padding_mode"):
        OverlapTileInferer(8, padding_mode="wrap")
    with pytest.raises(ValueError, match="2D image"):
        OverlapTileInferer((8, 8, 8))(torch.zeros(1, 2, 8, 8), _net(2))
