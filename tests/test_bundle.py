"""The bundle workflow layer: override ids checked against the bundle's config files, the executed
config exported and handed to the tracker, the plain ConfigWorkflow warned about."""

import json
import logging
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

from unet_med.bundle import (
    UNetMedWorkflow,
    bundle_config_ids,
    check_override_ids,
    require_file,
    warn_without_workflow,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "bundles" / "unet2d_paper" / "configs"


def _workflow(tmp_path, files=("training.json",), workflow=UNetMedWorkflow, **overrides):
    return workflow(
        config_file=[str(CONFIGS / f) for f in files],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=False,
        run_id="training",
        bundle_root=str(CONFIGS.parent),
        output_dir=str(tmp_path / "run"),
        **overrides,
    )


def test_unknown_override_id_is_refused_with_the_valid_ids(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config id\(s\) \['epoch'\] on the command line") as info:
        _workflow(tmp_path, epoch=3)
    assert "'epochs'" in str(info.value) and str(CONFIGS) in str(info.value)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_known_override_ids_pass_whichever_config_file_holds_them(tmp_path):
    # a nested id, an id of evaluate.json on a training run, MONAI's own _meta_ ids
    overrides = {"network_def#base_width": 4, "checkpoint_file": "x.pt", "_meta_#version": "9"}
    workflow = _workflow(tmp_path, **overrides)
    assert workflow.parser["network_def"]["base_width"] == 4
    ids = bundle_config_ids(CONFIGS / "training.json")
    assert {"epochs", "checkpoint_file", "test_split", "backend", "finalize", "train"} <= ids
    assert "train#sampler" not in ids and "_meta_" not in ids
    assert "rules" not in ids  # series_selection.json (unet-med infer's rules) holds no config ids
    check_override_ids(["epochs", "train::dataloader", "_anything"], ids, "here")
    with pytest.raises(ValueError, match=r"\['lr_rate', 'trian#dataset'\]"):
        check_override_ids(["lr_rate", "trian#dataset", "lr"], ids, "here")


def test_executed_config_holds_the_overrides_and_reaches_the_tracker(tmp_path):
    workflow = _workflow(tmp_path, epochs=3, base_width=2, patch_size=[4, 4])
    (path,) = (tmp_path / "run" / "executed_configs").glob("training_*.json")
    assert workflow.executed_config == path.resolve()
    executed = json.loads(path.read_text())
    assert (executed["epochs"], executed["base_width"], executed["patch_size"]) == (3, 2, [4, 4])
    assert executed["_meta_"]["name"] == "unet2d_paper" and "network_def" in executed  # files merged
    assert executed["save_execute_config"] == str(path.resolve())
    assert workflow.parser.get_parsed_content("save_execute_config") == str(path.resolve())
    assert workflow.parser["tracker"]["config_file"] == "@save_execute_config"
    assert not list(path.parent.glob(".*"))  # written atomically: no temporary file left


def test_executed_config_path_can_be_chosen(tmp_path):
    target = tmp_path / "elsewhere" / "config.json"
    _workflow(tmp_path, save_execute_config=str(target))
    assert json.loads(target.read_text())["save_execute_config"] == str(target.resolve())
    assert not (tmp_path / "run" / "executed_configs").exists()


def test_only_rank_0_exports_the_executed_config(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    workflow = _workflow(tmp_path)
    assert workflow.executed_config is None and workflow.parser["save_execute_config"] is None
    assert not (tmp_path / "run").exists()


def test_a_config_without_save_execute_config_exports_nothing(tmp_path):
    workflow = UNetMedWorkflow(config_file=str(CONFIGS / "inference.json"), logging_file=False,
                               workflow_type="infer", output_dir=str(tmp_path / "out"))
    assert workflow.executed_config is None and "save_execute_config" not in workflow.parser
    assert not (tmp_path / "out").exists()


def test_plain_config_workflow_keeps_the_null_default_and_is_warned_about(tmp_path, caplog):
    plain = _workflow(tmp_path, workflow=ConfigWorkflow, epoch=3)  # no id check either
    assert plain.parser["save_execute_config"] is None and not (tmp_path / "run").exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="unet_med.bundle"):
        warn_without_workflow(None)
        warn_without_workflow("/run/executed_configs/training_20250101-000000.json")
    assert [r.getMessage() for r in caplog.records if r.name == "unet_med.bundle"] == [
        "running without --workflow_name unet_med.bundle.UNetMedWorkflow: command-line override ids are not "
        "checked and the executed config is not logged to MLflow"
    ]


def test_bundles_name_their_handlers_and_have_one_spatial_dims_and_one_run_list():
    for bundle in ("unet2d_paper", "unet3d"):
        configs = ROOT / "bundles" / bundle / "configs"
        texts = {p.name: p.read_text() for p in configs.glob("*.json")}
        for name, text in texts.items():
            assert "handlers#" not in text, name  # no handler referred to by list position
            assert "unet_med.engines" not in text, name
        training = json.loads(texts["training.json"])
        assert training["run"] == "@training" and training["initialize"] == "@setup"
        assert training["tracker"]["config_file"] == "@save_execute_config"
        assert training["preprocessing"]["spatial_dims"] == "@spatial_dims"
        assert any("dims=@spatial_dims" in step for step in training["setup"])
        assert json.loads(texts["evaluate.json"])["run"] == "@evaluating"
        assert json.loads(texts["inference.json"])["run"] == "@inferring"
        multi_gpu = json.loads(texts["multi_gpu_train.json"])
        assert not {"training", "run"} & set(multi_gpu) and multi_gpu["initialize"][-1] == "$@setup"


def test_require_file_names_the_file_and_what_it_holds(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model.pt does not exist \(the trained weights\)"):
        require_file(tmp_path / "model.pt", "the trained weights")
    (tmp_path / "model.pt").write_bytes(b"")
    assert require_file(tmp_path / "model.pt", "the trained weights") == tmp_path / "model.pt"
