"""Exported networks in their engines: ONNX Runtime gives PyTorch's logits (1e-4) and the same
segmentation through the overlap-tile inferer, 2D and 3D; the graph declares the legal sizes;
illegal tiles are refused with the nearest legal sizes; TorchScript matches exactly."""

from __future__ import annotations

import pytest
import torch

from unet_med.export.runtime import OnnxRuntimeNetwork, TorchScriptNetwork
from unet_med.export.writing import export_network, legal_size_rule, network_document
from unet_med.inferers import OverlapTileInferer
from unet_med.networks import UNet

# tiny nets: 2D with 2 poolings, 3D with 1; (volume, output tile) give several tiles per axis
CASES = {
    2: (dict(widths=(2, 4, 8)), (45, 38), 8),
    3: (dict(widths=(2, 4)), (23, 18, 13), 6),
}


@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def exported(request, tmp_path_factory):
    dims = request.param
    kwargs, volume, tile = CASES[dims]
    torch.manual_seed(dims)
    net = UNet(dims, 1, 3, **kwargs).eval()
    path = tmp_path_factory.mktemp(f"onnx{dims}d") / "model.onnx"
    difference = export_network(net, path, "onnx")
    return net, path, difference, volume, tile


@pytest.mark.slow
def test_onnx_runtime_gives_pytorchs_logits_and_segmentation(exported):
    net, path, difference, volume, tile = exported
    assert difference < 1e-4  # the export's own check on a random tile
    onnx_net = OnnxRuntimeNetwork(path, network_document(net))
    inferer = OverlapTileInferer(tile)
    x = torch.rand((1, 1, *volume), generator=torch.Generator().manual_seed(0))
    assert inferer.plan(volume, net).num_tiles > 1
    with torch.no_grad():
        expected = inferer(x, net)
        got = inferer(x, onnx_net)
    assert got.shape == expected.shape == (1, 3, *volume)
    assert float((got - expected).abs().max()) < 1e-4
    assert torch.equal(got.argmax(1), expected.argmax(1))


@pytest.mark.slow
def test_onnx_graph_declares_legal_sizes_and_a_free_batch(exported):
    import onnx

    net, path, *_ = exported
    smallest, period = legal_size_rule(net.spec)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and dims[1].dim_value == 1
    for axis, dim in enumerate(dims[2:]):
        assert dim.dim_param == f"{period}*k{axis} + {smallest - period}"
    # a batch of several tiles of different legal sizes per axis runs
    onnx_net = OnnxRuntimeNetwork(path, network_document(net))
    sizes = [smallest + period * i for i in range(net.spatial_dims)]
    x = torch.rand((3, 1, *sizes))
    with torch.no_grad():
        assert onnx_net(x).shape == net(x).shape


@pytest.mark.slow
def test_illegal_tile_is_refused_with_the_nearest_legal_sizes(exported):
    net, path, *_ = exported
    smallest, period = legal_size_rule(net.spec)
    onnx_net = OnnxRuntimeNetwork(path, network_document(net))
    sizes = [smallest + period] * net.spatial_dims
    sizes[0] += 1  # ONNX Runtime itself would run it and return a misaligned output
    with pytest.raises(ValueError, match=rf"model\.onnx: input size .* not legal.*axis 0: {sizes[0]} is "
                       rf"illegal, nearest legal sizes {smallest + period} \(below\) and "
                       rf"{smallest + 2 * period} \(above\)"):
        onnx_net(torch.rand((1, 1, *sizes)))
    with pytest.raises(ValueError, match=r"expects \(batch, 1, .*got shape"):
        onnx_net(torch.rand((1, 2, *[smallest] * net.spatial_dims)))


def test_torchscript_export_matches_eager_and_checks_sizes(tmp_path):
    torch.manual_seed(0)
    net = UNet(3, 1, 2, widths=(2, 4)).eval()
    assert export_network(net, tmp_path / "model.ts", "torchscript") == 0.0
    scripted = TorchScriptNetwork(tmp_path / "model.ts", network_document(net))
    x = torch.rand(1, 1, 20, 22, 18)
    with torch.no_grad():
        assert torch.equal(scripted(x), net(x))
    with pytest.raises(ValueError, match=r"model\.ts: input size \(21, 22, 18\) is not legal"):
        scripted(torch.rand(1, 1, 21, 22, 18))
