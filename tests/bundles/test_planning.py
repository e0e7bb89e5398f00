"""A training started with only ``--manifest`` plans itself from the data: the plan is written,
its fingerprint cached and reused, explicit ids win, the effective plan is saved beside the
checkpoint and applied by ``unet-med infer`` without ``--set``; a plan file made for another
manifest is refused; ``--time_limit_minutes`` stops the training cleanly."""

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from unet_med.data.demo import generate_demo_dataset
from unet_med.planning import cached_fingerprint, make_plan, write_plan

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def _run(out: Path) -> mlflow.entities.Run:
    client = mlflow.MlflowClient(f"sqlite:///{out.parent.resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("unet2d_paper").experiment_id])
    return max(runs, key=lambda r: r.info.start_time)


@pytest.fixture(scope="module")
def demo2d(tmp_path_factory):
    return generate_demo_dataset(tmp_path_factory.mktemp("demo2d"), dims=2, n=8, size=40)


@pytest.fixture(scope="module")
def planned_run(demo2d, tmp_path_factory, bundle_command, run_ok):
    """A tiny training with an explicit patch size and width; everything else planned."""
    out = tmp_path_factory.mktemp("planned") / "run"
    cwd = out.parent
    command = bundle_command("unet2d_paper", "training", ["training.json"], out, demo2d,
                             "--epochs", "1", "--patch_size", "[4,4]")
    first = run_ok(command, cwd=cwd)
    second = run_ok(command, cwd=cwd)  # same manifest, same output folder: the fingerprint is reused
    return out, first, second


def test_training_plans_itself_and_explicit_ids_win(planned_run, demo2d):
    out, first, second = planned_run
    plan = json.loads((out / "plan" / "plan.json").read_text())
    assert plan["bundle"] == "unet2d_paper" and plan["normalization"] == "ct_dataset"  # demo data are CT
    assert "planned from the data" in first and "fingerprint: computing" in first
    assert "fingerprint: reusing" in second and "fingerprint: computing" not in second
    saved = json.loads((out / "models" / "plan.json").read_text())
    # explicit command-line ids replace the plan's, the rest is the plan's
    assert saved["patch_size"] == [4, 4] and saved["base_width"] == 2 and saved["iterations_per_epoch"] == 4
    planned = ("normalization", "intensity_clip", "intensity_mean", "intensity_std", "spacing", "pos", "neg")
    for key in planned:
        assert saved[key] == plan[key], key
    run = _run(out)
    assert run.data.params["plan.normalization"] == "ct_dataset"
    assert {"models/plan.json", "models/network.json"} <= {
        f.path for f in mlflow.MlflowClient(f"sqlite:///{out.parent.resolve()}/mlflow.db").list_artifacts(
            run.info.run_id, "models")
    }


def test_infer_applies_the_training_plan_without_set(planned_run, demo2d, tmp_path):
    out, _, _ = planned_run
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "infer", "--bundle", str(ROOT / "bundles" / "unet2d_paper"),
         "--checkpoint", str(out / "models" / "model.pt"), "--input", str(Path(demo2d).parent / "images"),
         "--output", str(tmp_path / "pred"), "--split", "test", "--reference", str(demo2d), "--no-qc"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"plan applied: {out / 'models' / 'plan.json'}" in result.stdout
    assert "normalization" in result.stdout


def test_a_plan_for_another_manifest_is_refused(demo2d, tmp_path, bundle_command):
    other = generate_demo_dataset(tmp_path / "other", dims=2, n=6, size=40, seed=3)
    plan = make_plan(cached_fingerprint(other, tmp_path / "fp", progress=False), bundle="unet2d_paper",
                     throughput_flops=5e9)
    plan_file = write_plan(plan, tmp_path / "plan.json")
    configs = [str(ROOT / "bundles" / "unet2d_paper" / "configs" / "training.json"), str(plan_file)]
    command = bundle_command("unet2d_paper", "training", ["training.json"], tmp_path / "run", demo2d,
                             "--epochs", "1")
    command[command.index("--config_file") + 1] = str(configs)
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "PlanError" in text and str(Path(demo2d).resolve()) in text
    assert plan["manifest_sha256"][:12] in text


def test_time_limit_stops_cleanly_with_the_best_model(demo2d, tmp_path, bundle_command, run_ok):
    out = tmp_path / "run"
    log = run_ok(bundle_command("unet2d_paper", "training", ["training.json"], out, demo2d,
                                "--epochs", "500", "--patch_size", "[4,4]", "--time_limit_minutes", "0.2"),
                 cwd=tmp_path)
    assert "time limit of 0.2 min" in log
    run = _run(out)
    assert run.info.status == "FINISHED" and run.data.tags["unet_med.stop_reason"] == "time_limit"
    last = torch.load(out / "models" / "checkpoint_last.pt", weights_only=True)
    assert 1 <= last["trainer"]["epoch"] < 500
    # the best validated weights, or the last ones when the limit came before any validation
    assert (out / "models" / "model.pt").is_file()
