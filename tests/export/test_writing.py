"""``export_bundle``: export.json holds what inference needs (labels, the plan's spacing and
normalisation, sizes and margin, a config that rebuilds the same preprocessing); missing ONNX
packages and ensembles are refused with one clear error."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from monai.transforms import ScaleIntensityRanged

from unet_med.export import EXPORT_FILE, export_bundle, load_export
from unet_med.export.writing import require_onnx
from unet_med.inference import BundleError
from unet_med.networks import UNet

PLAN = {"window": [-300, 700], "spacing": [1.5, 1.5, 2.5], "batch_size": 4, "_comments_": {"window": "CT"}}


@pytest.fixture
def trained_bundle(infer_bundle, tmp_path):
    """The shared tiny 3D bundle, its preprocessing reading ``window`` and ``spacing`` by id, with a
    training run's checkpoint: ``network.json`` (widths 2, 4, 8) and ``plan.json`` beside it."""
    root = tmp_path / "bundle"
    shutil.copytree(infer_bundle, root)
    config_path = root / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config.update(window=[-500, 500], spacing=[1.0, 1.0, 2.0])
    config["preprocessing"].update(window="@window", spacing="@spacing")
    config_path.write_text(json.dumps(config))
    torch.manual_seed(0)
    net = UNet(3, 1, 3, widths=(2, 4, 8))
    run = tmp_path / "run" / "models"
    run.mkdir(parents=True)
    torch.save(net.state_dict(), run / "model.pt")
    (run / "network.json").write_text(json.dumps({"_target_": "unet_med.networks.UNet", **net.config}))
    (run / "plan.json").write_text(json.dumps(PLAN))
    return root, run / "model.pt"


def test_export_json_holds_labels_plan_sizes_and_a_config_that_rebuilds_the_preprocessing(
    trained_bundle, tmp_path
):
    bundle, checkpoint = trained_bundle
    result = export_bundle(bundle, tmp_path / "export", fmt="torchscript", checkpoint=checkpoint)
    assert result.model_file == tmp_path / "export" / "model.ts"
    doc = json.loads((tmp_path / "export" / EXPORT_FILE).read_text())
    assert doc["format"] == "torchscript" and doc["engine"] == "torchscript"
    assert doc["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
    # training's preprocessing: the plan's window and spacing, not inference.json's
    assert doc["preprocessing"]["window"] == [-300, 700]
    assert doc["preprocessing"]["spacing"] == [1.5, 1.5, 2.5]
    assert doc["plan"] == {"window": [-300, 700], "spacing": [1.5, 1.5, 2.5]}  # inference ids only
    # the architecture of network.json (3 levels), not inference.json's (2 levels)
    assert doc["network"]["widths"] == [2, 4, 8]
    sizes = doc["sizes"]
    assert sizes["period"] == 4 and sizes["margin"] == [20, 20, 20]
    assert sizes["smallest_input"] == [44, 44, 44] and sizes["smallest_output"] == [4, 4, 4]
    assert sizes["legal_input"].startswith("44 + 4 * n voxels")
    assert sizes["activation_bytes_per_voxel"] > 0
    assert doc["verified"]["max_abs_difference"] < 1e-4
    assert doc["source"]["checkpoint"] == str(checkpoint.resolve())
    assert set(doc["config"]) >= {
        "imports", "preprocessing", "inferer", "postprocessing", "window", "spacing",
    }

    loaded = load_export(tmp_path / "export")
    assert loaded.labels == {0: "background", 1: "organ", 2: "lesion"}
    scaling = [t for t in loaded.preprocessing.transforms if isinstance(t, ScaleIntensityRanged)]
    assert (scaling[0].scaler.a_min, scaling[0].scaler.a_max) == (-300, 700)
    assert loaded.network.activation_bytes_per_voxel == sizes["activation_bytes_per_voxel"]


def test_the_training_run_record_travels_with_the_export(trained_bundle, tmp_path):
    from unet_med.tracking.linked_runs import training_run_for_checkpoint
    from unet_med.tracking.run_record import write_run_record

    bundle, checkpoint = trained_bundle
    write_run_record(checkpoint.parent.parent, tracking_uri="sqlite:///x.db", experiment_id="1", run_id="abc")
    result = export_bundle(bundle, tmp_path / "deploy" / "export", fmt="torchscript", checkpoint=checkpoint)
    record = training_run_for_checkpoint(result.model_file)  # what `unet-med infer --track` links to
    assert record is not None and record.run_id == "abc"


def test_export_folder_overrides_and_engine_mismatch(trained_bundle, tmp_path):
    bundle, checkpoint = trained_bundle
    export_bundle(bundle, tmp_path / "export", fmt="torchscript", checkpoint=checkpoint)
    loaded = load_export(tmp_path / "export", overrides={"inferer#output_tile_size": 8})
    assert loaded.inferer.output_tile_size == 8
    with pytest.raises(BundleError, match="a torchscript export, which the onnxruntime engine cannot run"):
        load_export(tmp_path / "export", engine="onnxruntime")
    with pytest.raises(BundleError, match=r"no export\.json \(write one with: unet-med export"):
        load_export(bundle)


def test_missing_onnx_packages_are_named_with_the_extra(trained_bundle, tmp_path, monkeypatch):
    bundle, checkpoint = trained_bundle
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(BundleError, match=r"'onnxruntime', which is not installed.*'unet-med\[onnx\]'"):
        require_onnx()
    with pytest.raises(BundleError, match=r"unet-med\[onnx\]"):
        export_bundle(bundle, tmp_path / "export", fmt="onnx", checkpoint=checkpoint)
    assert not (tmp_path / "export").exists()


def test_a_folder_of_several_checkpoints_is_refused(trained_bundle, tmp_path):
    bundle, checkpoint = trained_bundle
    runs = tmp_path / "cv"
    for fold in ("fold0", "fold1"):
        shutil.copytree(checkpoint.parent, runs / fold / "models")
    with pytest.raises(BundleError, match=r"export takes one checkpoint, .*cv holds 2"):
        export_bundle(bundle, tmp_path / "export", fmt="torchscript", checkpoint=runs)
    with pytest.raises(BundleError, match="unknown export format 'tflite'"):
        export_bundle(bundle, tmp_path / "export", fmt="tflite", checkpoint=checkpoint)
