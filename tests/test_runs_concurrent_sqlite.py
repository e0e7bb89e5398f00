"""Two trainings started at the same time on one new SQLite store both end up complete; a batch
inference with ``--track`` is logged next to them, linked to the training whose checkpoint it used."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
from runs_training import BUNDLE, demo_manifest, start_training

from pipelines.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two tiny trainings (seeds 1 and 2) started together on ``shared/mlflow.db``, which does not
    exist yet: both processes race to create it."""
    root = tmp_path_factory.mktemp("shared_sqlite")
    manifest = demo_manifest(root / "data")
    store = root / "shared" / "mlflow.db"
    uri = f"sqlite:///{store}"
    trainings = [
        start_training(root / f"run{seed}", manifest, {"tracking_uri": uri, "seed": str(seed)})
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


def test_two_trainings_share_a_new_sqlite_store(trained, capsys):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(trained["uri"])
    experiments = [e.name for e in client.search_experiments()]
    assert experiments.count("unet2d_paper") == 1  # created once, used by both
    runs = client.search_runs([client.get_experiment_by_name("unet2d_paper").experiment_id])
    assert sorted(run.data.params["train.seed"] for run in runs) == ["1", "2"]
    iterations = None
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_mean_dice")] == [1, 2]
        losses = client.get_metric_history(run.info.run_id, "train_loss")
        iterations = iterations or len(losses)
        assert len(losses) == iterations >= 2  # no iteration lost to a locked database
        assert "best_val_mean_dice" in run.data.metrics and "epoch_time_s" in run.data.metrics
        assert "models/model.pt" in [f.path for f in client.list_artifacts(run.info.run_id, "models")]

    # the comparison reads the store from its folder, as users point it at an output folder
    capsys.readouterr()
    code = main(
        [
            "runs",
            "compare",
            "--tracking-uri",
            str(trained["store"].parent),
            "--experiment",
            "unet2d_paper",
            "--metric",
            "train_loss",
            "--no-plot",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert all(run.info.run_id[:8] in out for run in runs)
    assert "params that differ: train.seed\n" in out  # nothing else differs between the two runs


def test_tracked_inference_is_linked_to_its_training_run(trained, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    run_dir = trained["root"] / "run1"
    training_run_id = json.loads((run_dir / "mlflow_run.json").read_text())["run_id"]
    bundle = trained["bundle"]
    images = trained["manifest"].parent / "images"

    capsys.readouterr()
    code = main(
        [
            "infer",
            "--bundle",
            str(bundle),
            "--checkpoint",
            str(run_dir / "models" / "model.pt"),
            "--input",
            str(images),
            "--output",
            str(tmp_path / "out"),
            "--track",
            "--no-qc",
        ]
    )
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0, captured.err[-2000:]
    client = MlflowClient(trained["uri"])  # the training's store, from its run record
    experiment = client.get_experiment_by_name("unet2d_paper")
    linked = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`unet_med.training_run_id` = '{training_run_id}'"
    )
    assert len(linked) == 1
    run = linked[0]
    assert f"MLflow run {run.info.run_id}" in out
    assert run.data.tags["unet_med.run_kind"] == "inference"
    n_images = len(list(images.glob("*.nii.gz")))
    assert run.data.metrics["scans_ok"] == n_images and run.data.metrics["scans_failed"] == 0
    assert run.data.params["infer.checkpoint"] == str((run_dir / "models" / "model.pt").resolve())
    report = pd.read_csv(client.download_artifacts(run.info.run_id, "inference/report.csv", str(tmp_path)))
    assert len(report) == n_images and set(report["status"]) == {"ok"}

    # the training table leaves the inference run out; --kind inference lists it
    capsys.readouterr()
    assert (
        main(
            ["runs", "compare", "--tracking-uri", trained["uri"], "--experiment", "unet2d_paper", "--no-plot"]
        )
        == 0
    )
    assert run.info.run_id[:8] not in capsys.readouterr().out
    assert (
        main(
            [
                "runs",
                "compare",
                "--tracking-uri",
                trained["uri"],
                "--experiment",
                "unet2d_paper",
                "--kind",
                "inference",
                "--metric",
                "scans_ok",
                "--no-plot",
            ]
        )
        == 0
    )
    assert run.info.run_id[:8] in capsys.readouterr().out


def test_track_with_an_unreachable_server_stops_before_segmenting(trained, tmp_path, capsys):
    from unet_med.tracking_store import free_loopback_port

    run_dir = trained["root"] / "run1"
    url = f"http://127.0.0.1:{free_loopback_port()}"
    code = main(
        [
            "infer",
            "--bundle",
            str(trained["bundle"]),
            "--checkpoint",
            str(run_dir / "models" / "model.pt"),
            "--input",
            str(trained["manifest"].parent / "images"),
            "--output",
            str(tmp_path / "out"),
            "--track",
            "--tracking-uri",
            url,
        ]
    )
    assert code == 2
    assert f"cannot reach the MLflow tracking server at {url}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
