"""The bundles run from the command line as the README documents them, and the MLflow store holds the
run: params, per-iteration loss, per-epoch Dice, best metric, artifacts, the executed config;
evaluation writes a per-case CSV and a linked MLflow run. The command without ``--workflow_name``
(plain ``ConfigWorkflow``) still trains."""

import json

import mlflow
import pandas as pd
import pytest
import torch

from unet_med.data.demo import generate_demo_dataset
from unet_med.networks import UNet

pytestmark = pytest.mark.slow

CONTRACT_PARAMS = {
    "net.preset", "net.base_width", "net.padding", "net.spatial_dims", "net.in_channels", "net.out_channels",
    "optim.name", "optim.lr", "loss.name", "data.manifest", "data.manifest_sha256", "data.patch_size",
    "data.input_patch_size", "train.epochs", "train.batch_size", "train.seed", "train.amp",
}


@pytest.fixture(scope="module")
def demo2d(tmp_path_factory):
    return generate_demo_dataset(tmp_path_factory.mktemp("demo2d"), dims=2, n=8, size=40)


def test_2d_training_and_evaluation_from_the_command_line(demo2d, tmp_path, bundle_command, run_ok):
    out = tmp_path / "run"
    log = run_ok(bundle_command("unet2d_paper", "training", ["training.json"], out, demo2d,
                                "--epochs", "2", "--patch_size", "[4,4]"), cwd=tmp_path)
    uri = f"sqlite:///{out.parent.resolve()}/mlflow.db"
    assert f"mlflow ui --backend-store-uri {uri}" in log
    # a readable log: no notice about a GPU decoder this machine lacks, no MONAI orientation warnings
    for noise in ("nvImageCodec", "axcodes", "Orientationd", "FutureWarning"):
        assert noise not in log, noise
    # written to a pipe (a log file), the epoch's progress bar gives way to its summary line alone
    assert "Epoch [1/2]" not in log and "epoch 2/2: mean loss" in log  # no bar frame, the summary

    for name in ("model.pt", "checkpoint_last.pt"):
        torch.load(out / "models" / name, weights_only=True)
    last = torch.load(out / "models" / "checkpoint_last.pt", weights_only=True)
    assert last["trainer"]["epoch"] == 2 and {"network", "optimizer", "lr_scheduler"} <= set(last)
    # network.json names the architecture of model.pt (base width 2 here, not the bundle's 64)
    network = json.loads((out / "models" / "network.json").read_text())
    assert network.pop("_target_") == "unet_med.networks.UNet" and network["widths"][0] == 2
    UNet(**network).load_state_dict(torch.load(out / "models" / "model.pt", weights_only=True))

    client = mlflow.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("unet2d_paper").experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "FINISHED" and run.info.run_name.startswith("unet2d_paper-paper-")
    params = run.data.params
    assert CONTRACT_PARAMS <= set(params)
    assert params["optim.name"] == "SGD" and params["optim.momentum"] == "0.99"
    assert params["loss.name"] == "WeightedCrossEntropyLoss" and params["net.base_width"] == "2"
    assert params["data.patch_size"] == "[4, 4]" and params["data.input_patch_size"] == "[188, 188]"
    assert any(k.startswith("aug.") for k in params)
    iterations = last["trainer"]["iteration"]
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == list(range(1, iterations + 1))
    for key in ("val_mean_dice", "val_dice_cell", "val_dice_dense_cell", "epoch_time_s", "samples_per_s",
                "peak_memory_mb"):
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2], key
    assert {"best_val_mean_dice", "best_epoch"} <= set(run.data.metrics)
    artifacts = out.parent / "mlartifacts" / run_id / "artifacts"
    config = json.loads((artifacts / "config" / "resolved_config.json").read_text())
    assert config["epochs"] == 2 and config["preset"] == "paper"
    # the logged config is the executed one the workflow wrote: files merged, overrides applied
    (executed,) = (out / "executed_configs").glob("training_*.json")
    assert json.loads(executed.read_text()) == config
    assert config["save_execute_config"] == str(executed.resolve())
    assert (config["base_width"], config["patch_size"], config["manifest"]) == (2, [4, 4], str(demo2d))
    assert config["_meta_"]["name"] == "unet2d_paper" and "validate" in config
    assert (artifacts / "models" / "model.pt").is_file()
    assert (artifacts / "plots" / "learning_curve.png").stat().st_size > 1000
    assert list((artifacts / "overlays").glob("case*.png"))

    # evaluation as the issue types it (no --meta_file: MONAI finds configs/metadata.json)
    run_ok(bundle_command("unet2d_paper", "evaluating", ["training.json", "evaluate.json"], out, demo2d,
                          "--patch_size", "[4,4]", meta=False), cwd=tmp_path)
    table = pd.read_csv(out / "eval" / "per_case_metrics.csv")
    tests = pd.read_csv(demo2d)
    assert sorted(table["subject_id"]) == sorted(tests.loc[tests["split"] == "test", "subject_id"])
    for column in ("dice_cell", "hd95_mm_cell", "assd_mm_cell", "dice_dense_cell", "mean_dice"):
        assert column in table.columns
    assert table["dice_cell"].between(0, 1).all()
    # evaluation runs have their own experiment, out of the training runs table
    runs = client.search_runs([client.get_experiment_by_name("unet2d_paper-inference").experiment_id],
                              filter_string="tags.`unet_med.run_kind` = 'evaluation'")
    assert len(runs) == 1 and runs[0].data.tags["unet_med.training_run_id"] == run_id
    assert "test_mean_dice" in runs[0].data.metrics
    assert [a.path for a in client.list_artifacts(runs[0].info.run_id, "evaluation")] == [
        "evaluation/per_case_metrics.csv"
    ]


def test_3d_bundle_trains_with_dice_ce_on_ct_volumes(tmp_path, bundle_command, run_ok):
    manifest = generate_demo_dataset(tmp_path / "demo3d", dims=3, n=4, size=24)
    out = tmp_path / "run"
    run_ok(bundle_command("unet3d", "training", ["training.json"], out, manifest,
                          "--epochs", "1", "--patch_size", "[4,4,4]", "--cache", "none"), cwd=tmp_path)
    client = mlflow.MlflowClient(f"sqlite:///{out.parent.resolve()}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("unet3d").experiment_id])
    assert run.data.params["loss.name"] == "DiceCELoss" and run.data.params["net.preset"] == "cicek3d"
    # a CPU plan trains the 3D U-Net with two poolings (40 voxels of context), batch norm kept
    assert run.data.params["net.depth"] == "2" and run.data.params["net.norm"] == "batch"
    assert run.data.params["data.input_patch_size"] == "[44, 44, 44]"
    # batch-norm statistics recomputed from foreground patches before each validation
    assert run.data.params["train.bn_recalibration_patches"] == "16"
    network = json.loads((out / "models" / "network.json").read_text())
    assert len(network["widths"]) == 3 and network["norm"] == "batch"  # what infer rebuilds
    assert {"val_dice_organ", "val_dice_lesion", "train_loss"} <= set(run.data.metrics)
    state = torch.load(out / "models" / "model.pt", weights_only=True)
    assert any(v.ndim == 5 for v in state.values())  # 3D convolutions


def test_the_command_without_workflow_name_still_trains_and_says_so(demo2d, tmp_path, bundle_command, run_ok):
    out = tmp_path / "run"
    command = bundle_command("unet2d_paper", "training", ["training.json"], out, demo2d, "--epochs", "1",
                             "--patch_size", "[4,4]", workflow=False)
    log = run_ok(command, cwd=tmp_path)
    assert "running without --workflow_name unet_med.bundle.UNetMedWorkflow" in log
    assert torch.load(out / "models" / "model.pt", weights_only=True)
    assert not (out / "executed_configs").exists()
    client = mlflow.MlflowClient(f"sqlite:///{out.parent.resolve()}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("unet2d_paper").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["train.epochs"] == "1"
