"""Fixtures of the tracking tests: an SQLite store holding runs logged with the plain MLflow API
under the bundles' names, and tiny trainings of the 2D paper bundle started in subprocesses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from matplotlib import colors

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "unet2d_paper"
# Smallest useful training: 2 epochs, width 4, 4x4 output patches, no augmentation.
TINY = {"epochs": "2", "base_width": "4", "patch_size": "[4,4]", "aug_prob": "0", "num_workers": "0",
        "iterations_per_epoch": "4"}

COMMON_PARAMS = {
    "net.preset": "paper",
    "net.spatial_dims": "2",
    "optim.name": "SGD",
    "optim.lr": "0.01",
    "data.manifest_sha256": "ab" * 32,
}


@pytest.fixture(autouse=True)
def working_dir_store(tmp_path, monkeypatch):
    """Every tracking test runs in its own working directory, so the default store
    (``./mlflow.db``) is ``tmp_path/mlflow.db``, and a ``MLFLOW_TRACKING_URI`` of the person
    running the tests is not written to."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- pictures ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def has_colour() -> Callable[[np.ndarray, str], bool]:
    """``has_colour(image, "C0")``: whether an RGB(A) image holds pixels of a matplotlib colour."""

    def check(image: np.ndarray, colour: str) -> bool:
        rgb = np.array(colors.to_rgb(colour))
        return bool((np.abs(image[..., :3] - rgb).max(axis=-1) < 0.02).any())

    return check


# -- a store of runs logged with the plain MLflow API --------------------------------------------
def _log_run(client, experiment_id, name, params, val_dice, train_loss, status="FINISHED"):
    from mlflow.entities import Metric, Param, RunTag

    run = client.create_run(experiment_id, run_name=name, tags={"bundle.name": "unet2d_paper"})
    now = int(time.time() * 1000)
    metrics = [Metric("val_mean_dice", v, now, epoch) for epoch, v in enumerate(val_dice)]
    metrics += [Metric("train_loss", v, now, it) for it, v in enumerate(train_loss)]
    if val_dice:
        best = int(np.argmax(val_dice))
        metrics += [
            Metric("best_val_mean_dice", val_dice[best], now, best),
            Metric("best_epoch", best, now, 0),
        ]
        metrics += [Metric("val_dice_cell", val_dice[-1], now, len(val_dice) - 1)]
    client.log_batch(
        run.info.run_id,
        metrics=metrics,
        params=[Param(k, str(v)) for k, v in params.items()],
        tags=[RunTag("net.preset", params.get("net.preset", ""))],
    )
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture(scope="session")
def runs_store(tmp_path_factory):
    """An SQLite store with experiment ``unet2d_paper`` (two finished runs of different widths and
    one run that failed before validating), an empty experiment, and experiment ``unet3d``."""
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    paper = client.create_experiment("unet2d_paper", artifact_location=str(root / "mlartifacts"))
    client.create_experiment("unet3d", artifact_location=str(root / "mlartifacts3d"))
    client.create_experiment("empty", artifact_location=str(root / "mlartifacts_empty"))
    ids = {
        "narrow": _log_run(
            client,
            paper,
            "unet2d_paper-paper-narrow",
            {**COMMON_PARAMS, "net.base_width": 8},
            [0.2, 0.5, 0.6],
            [0.9, 0.7, 0.5],
        ),
        "wide": _log_run(
            client,
            paper,
            "unet2d_paper-paper-wide",
            {**COMMON_PARAMS, "net.base_width": 16},
            [0.3, 0.7, 0.65],
            [0.8, 0.4, 0.3],
        ),
        "crashed": _log_run(
            client,
            paper,
            "unet2d_paper-paper-crashed",
            {**COMMON_PARAMS, "net.base_width": 4},
            [],
            [1.2],
            status="FAILED",
        ),
    }
    evaluation = client.create_run(
        paper,
        run_name="unet2d_paper-paper-eval",
        tags={"unet_med.run_kind": "evaluation", "unet_med.training_run_id": ids["wide"]},
    )
    client.log_metric(evaluation.info.run_id, "test_mean_dice", 0.66)
    client.set_terminated(evaluation.info.run_id)
    ids["evaluation"] = evaluation.info.run_id
    return {"root": root, "uri": uri, "ids": ids}


# -- tiny trainings of the 2D paper bundle -------------------------------------------------------
def _demo_manifest(out_dir: Path) -> Path:
    from unet_med.data.demo import generate_demo_dataset

    return generate_demo_dataset(out_dir, dims=2, n=6, size=64, seed=0)


@pytest.fixture(scope="session")
def demo_manifest() -> Callable[[Path], Path]:
    """``demo_manifest(folder)``: a 6-image 64x64 demo dataset (4 train, 1 val, 1 test) written
    into ``folder``; returns the manifest path."""
    return _demo_manifest


@dataclass
class Training:
    """A ``python -m monai.bundle run training`` subprocess writing its output to ``log``."""

    process: subprocess.Popen
    output_dir: Path
    log: Path

    def finish(self, timeout_s: float) -> None:
        """Wait for the training; fail with the end of its log when it fails or runs too long."""
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            code = f"killed after {timeout_s:g} s"
        if code != 0:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"training in {self.output_dir} ended with {code}:\n{tail}")


def _start_training(
    output_dir: Path, manifest: Path, overrides: dict[str, str], cwd: Path | None = None
) -> Training:
    output_dir.mkdir(parents=True, exist_ok=True)
    log = output_dir / "training.log"
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--workflow_name",
        "unet_med.bundle.UNetMedWorkflow",
        "--config_file",
        str(BUNDLE / "configs" / "training.json"),
        "--meta_file",
        str(BUNDLE / "configs" / "metadata.json"),
        "--bundle_root",
        str(BUNDLE),
        "--output_dir",
        str(output_dir),
        "--manifest",
        str(manifest),
        *[item for key, value in {**TINY, **overrides}.items() for item in (f"--{key}", value)],
    ]
    with open(log, "wb") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=cwd or output_dir)
    return Training(process, output_dir, log)


@pytest.fixture(scope="session")
def start_training() -> Callable[[Path, Path, dict[str, str]], Training]:
    """``start_training(output_dir, manifest, overrides, cwd=None)``: start a tiny training of the
    2D paper bundle into ``output_dir`` (``overrides``, bundle ids to values, replace or add to
    ``TINY``) from the working directory ``cwd`` (default ``output_dir``, whose ``mlflow.db`` is
    then the default store); call ``.finish(timeout_s)`` on the result to wait for it."""
    return _start_training


@pytest.fixture(scope="session")
def shared_store_trainings(tmp_path_factory):
    """Two tiny trainings (seeds 1 and 2) started together on ``shared/mlflow.db``, which does not
    exist yet: both processes race to create it. Also the bundle's inference config at the width
    the tiny trainings used."""
    root = tmp_path_factory.mktemp("shared_sqlite")
    manifest = _demo_manifest(root / "data")
    store = root / "shared" / "mlflow.db"
    uri = f"sqlite:///{store}"
    trainings = [
        _start_training(root / f"run{seed}", manifest, {"tracking_uri": uri, "seed": str(seed)})
        for seed in (1, 2)
    ]
    for training in trainings:
        training.finish(timeout_s=400)
    # the bundle's inference config at the width the tiny trainings used
    bundle = root / "bundle"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    config_path = bundle / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["base_width"] = 4
    config_path.write_text(json.dumps(config))
    return {"root": root, "store": store, "uri": uri, "manifest": manifest, "bundle": bundle}
