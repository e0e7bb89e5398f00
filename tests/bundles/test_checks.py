"""MONAI's bundle checks on both bundles, offline: metadata against the project's schema, network
input/output (channels, dtype and, beyond MONAI's check, the valid spatial sizes), TorchScript
export of a checkpoint, and the workflow properties that bundle consumers look up (through MONAI's
``ConfigWorkflow`` and through the project's ``UNetMedWorkflow``)."""

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from unet_med.bundle import UNetMedWorkflow

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "bundles" / "schema" / "meta_schema.json"
BUNDLES = ["unet2d_paper", "unet3d"]
PRESET_DEPTH = {"unet2d_paper": 4, "unet3d": 3}  # the presets' poolings (paper, cicek3d)
PRESET_NORM = {"unet2d_paper": "none", "unet3d": "batch"}
CONFIG_FILES = ["metadata.json", "training.json", "evaluate.json", "inference.json", "multi_gpu_train.json",
                "logging.conf"]


def _configs(bundle: str) -> Path:
    return ROOT / "bundles" / bundle / "configs"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_bundle_folder_is_complete(bundle):
    for name in CONFIG_FILES:
        assert (_configs(bundle) / name).is_file(), name
    assert (ROOT / "bundles" / bundle / "docs" / "README.md").is_file()


@pytest.mark.parametrize("bundle", BUNDLES)
def test_metadata_verifies_against_the_local_schema(bundle, tmp_path):
    verify_metadata(meta_file=str(_configs(bundle) / "metadata.json"), filepath=str(SCHEMA))
    broken = json.loads((_configs(bundle) / "metadata.json").read_text())
    del broken["network_data_format"]["inputs"]["image"]["num_channels"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="num_channels"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(SCHEMA))


@pytest.mark.parametrize("bundle", BUNDLES)
def test_network_input_output_channels_dtype_and_valid_sizes(bundle):
    meta = str(_configs(bundle) / "metadata.json")
    config = str(_configs(bundle) / "training.json")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, device="cpu", base_width=2,
                      depth=PRESET_DEPTH[bundle], norm=PRESET_NORM[bundle])  # MONAI drops None overrides
    parser = ConfigParser()
    parser.read_config(config)
    parser.read_meta(meta)
    parser["base_width"] = 2
    parser["depth"] = parser["norm"] = None  # the preset's (planned values need data)
    net = parser.get_parsed_content("network_def")
    fmt = parser.get("_meta_#network_data_format")
    declared_in = tuple(fmt["inputs"]["image"]["spatial_shape"])
    declared_out = tuple(fmt["outputs"]["pred"]["spatial_shape"])
    assert net.output_size(declared_in) == declared_out
    # the patch size is planned from the data; the bundle's arithmetic maps the declared output
    # size (as a patch_size given on the command line) to the declared input size
    parser["patch_size"] = list(declared_out)
    assert tuple(parser.get_parsed_content("input_patch_size")) == declared_in


@pytest.mark.parametrize("bundle", BUNDLES)
def test_checkpoint_exports_to_torchscript(bundle, tmp_path):
    config = str(_configs(bundle) / "training.json")
    parser = ConfigParser()
    parser.read_config(config)
    parser["base_width"] = 2
    parser["depth"] = parser["norm"] = None
    net = parser.get_parsed_content("network_def")
    torch.save(net.state_dict(), tmp_path / "model.pt")
    ckpt_export(
        net_id="network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(tmp_path / "model.pt"),
        meta_file=str(_configs(bundle) / "metadata.json"),
        config_file=config,
        base_width=2,
        depth=PRESET_DEPTH[bundle],
        norm=PRESET_NORM[bundle],
    )
    scripted = torch.jit.load(str(tmp_path / "model.ts"))
    size = (1, 1) + ((188, 188) if bundle == "unet2d_paper" else (92, 92, 92))
    x = torch.rand(size)
    with torch.no_grad():
        assert torch.allclose(scripted(x), net.eval()(x), atol=1e-5)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A tiny demo dataset and checkpoint per bundle, so the workflows can be instantiated."""
    from unet_med.data.demo import generate_demo_dataset

    root = tmp_path_factory.mktemp("bundle_checks")
    out = {}
    for bundle, dims, size in (("unet2d_paper", 2, 32), ("unet3d", 3, 24)):
        data = root / bundle / "data"
        generate_demo_dataset(data, dims=dims, n=3, size=size)
        parser = ConfigParser()
        parser.read_config(str(_configs(bundle) / "training.json"))
        parser["base_width"] = 2
        parser["depth"] = parser["norm"] = None
        (root / bundle / "models").mkdir(parents=True)
        weights = parser.get_parsed_content("network_def").state_dict()
        torch.save(weights, root / bundle / "models" / "model.pt")
        out[bundle] = {"dims": dims, "size": size, "data": data, "out": root / bundle}
    return out


@pytest.mark.parametrize("bundle", BUNDLES)
@pytest.mark.parametrize(
    "workflow_class, workflow_type, files",
    [
        (ConfigWorkflow, "train", ["training.json"]),
        (ConfigWorkflow, "infer", ["inference.json"]),
        (ConfigWorkflow, "infer", ["training.json", "evaluate.json"]),
        (UNetMedWorkflow, "train", ["training.json"]),
    ],
)
def test_monai_workflow_properties(bundle, workflow_class, workflow_type, files, tiny_data):
    d = tiny_data[bundle]
    overrides = dict(
        bundle_root=str(ROOT / "bundles" / bundle),
        dataset_dir=str(d["data"]),
        base_width=2,
        depth=PRESET_DEPTH[bundle],
        norm=PRESET_NORM[bundle],
        checkpoint_file=str(d["out"] / "models" / "model.pt"),
    )
    if files != ["inference.json"]:
        overrides.update(output_dir=str(d["out"]), demo_n=3, demo_size=d["size"], cache="none")
        overrides.update(patch_size=[4] * d["dims"])  # legal for the preset's depth given above
    workflow = workflow_class(
        config_file=[str(_configs(bundle) / f) for f in files],
        meta_file=str(_configs(bundle) / "metadata.json"),
        workflow_type=workflow_type,
        **overrides,
    )
    workflow.initialize()
    assert workflow.check_properties() == []
    assert workflow.bundle_root == str(ROOT / "bundles" / bundle) and workflow.dataset_dir == str(d["data"])
    assert isinstance(workflow.device, torch.device)
    assert workflow.network_def.spatial_dims == d["dims"]
    if workflow_type == "train":
        assert workflow.max_epochs == workflow.parser.get_parsed_content("epochs")
        assert len(workflow.train_dataset) == len(workflow.parser.get_parsed_content("train#datalist"))
        assert type(workflow.evaluator.inferer).__name__ == "OverlapTileInferer"
    else:
        assert type(workflow.inferer).__name__ == "OverlapTileInferer"
        assert len(workflow.dataset) >= 1
