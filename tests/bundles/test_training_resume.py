"""A training killed with SIGKILL mid-run resumes from its last checkpoint (never half-written),
ends after the same number of epochs as an uninterrupted run, and continues the same MLflow run."""

import signal
import subprocess
import time
from pathlib import Path

import mlflow
import pytest
import torch

from unet_med.data.demo import generate_demo_dataset

pytestmark = pytest.mark.slow


def test_sigkill_then_resume(tmp_path, bundle_command, run_ok):
    manifest = generate_demo_dataset(tmp_path / "demo", dims=2, n=14, size=40)
    out = tmp_path / "run"
    command = bundle_command("unet2d_paper", "training", ["training.json"], out, manifest,
                             "--epochs", "3", "--patch_size", "[4,4]")
    last = out / "models" / "checkpoint_last.pt"
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 400
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.exists(), "no checkpoint was written"
        process.send_signal(signal.SIGKILL)  # in epoch 2 (or its validation)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    saved = torch.load(last, weights_only=True)  # complete, loadable
    assert 1 <= saved["trainer"]["epoch"] < 3
    # no temporary file left beside the checkpoints (Ignite's DiskSaver writes tmp* files and renames)
    known = {"checkpoint_last.pt", "model.pt", "network.json", "plan.json"}
    assert {p.name for p in last.parent.iterdir()} <= known
    epoch_length = saved["trainer"]["epoch_length"]

    log = run_ok(command + ["--resume", "true"], cwd=tmp_path)
    assert "resumed from" in log
    final = torch.load(last, weights_only=True)
    assert final["trainer"]["epoch"] == 3 and final["trainer"]["iteration"] == 3 * epoch_length

    client = mlflow.MlflowClient(f"sqlite:///{Path(out).parent.resolve()}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("unet2d_paper").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["unet_med.resumed"] == "1"
    assert {m.step for m in client.get_metric_history(run.info.run_id, "val_mean_dice")} == {1, 2, 3}
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == 3 * epoch_length
