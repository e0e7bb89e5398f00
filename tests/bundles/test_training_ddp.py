"""Distributed training: ``torchrun --nproc_per_node=2`` with ``multi_gpu_train.json`` (gloo on
CPU); only rank 0 logs to MLflow and writes checkpoints."""

import sys
from pathlib import Path

import mlflow
import pytest
import torch

from unet_med.data.demo import generate_demo_dataset

pytestmark = pytest.mark.slow


def test_two_process_gloo_training(tmp_path, bundle_command, run_ok):
    manifest = generate_demo_dataset(tmp_path / "demo", dims=2, n=14, size=40)
    out = tmp_path / "run"
    configs = ["training.json", "multi_gpu_train.json"]
    extra = ["--epochs", "1", "--patch_size", "[4,4]"]
    command = bundle_command("unet2d_paper", "training", configs, out, manifest, *extra)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run_ok(torchrun + command[1:], cwd=tmp_path)  # drop the interpreter: torchrun starts it

    client = mlflow.MlflowClient(f"sqlite:///{Path(out).parent.resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("unet2d_paper").experiment_id])
    assert len(runs) == 1  # rank 1 did not log
    run = runs[0]
    # an epoch is the fixed number of iterations (4, tests/bundles/conftest.py) on each rank, each
    # rank drawing from its half of the training set (DistributedSampler)
    per_rank = 4
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert steps == list(range(1, per_rank + 1))
    assert "val_mean_dice" in run.data.metrics
    last = torch.load(out / "models" / "checkpoint_last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == per_rank
    assert not any(k.startswith("module.") for k in last["network"])  # saved unwrapped from DDP


def test_two_process_gloo_training_of_the_batch_norm_3d_bundle(tmp_path, bundle_command, run_ok):
    """Both ranks recompute the batch-norm statistics before validating, without collectives
    of their own (the module inside DDP): the run must neither hang nor diverge."""
    manifest = generate_demo_dataset(tmp_path / "demo3d", dims=3, n=12, size=24)
    out = tmp_path / "run"
    configs = ["training.json", "multi_gpu_train.json"]
    extra = ["--epochs", "1", "--patch_size", "[4,4,4]", "--cache", "none", "--bn_recalibration_patches", "2"]
    command = bundle_command("unet3d", "training", configs, out, manifest, *extra)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run_ok(torchrun + command[1:], cwd=tmp_path)
    client = mlflow.MlflowClient(f"sqlite:///{Path(out).parent.resolve()}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("unet3d").experiment_id])
    assert "val_mean_dice" in run.data.metrics
    assert run.data.params["train.bn_recalibration_patches"] == "2"
