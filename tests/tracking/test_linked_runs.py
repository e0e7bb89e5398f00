"""unet_med.tracking.linked_runs: evaluation and batch-inference runs, each written in one go
(FINISHED, or FAILED when writing it fails) and linked to the training run of the checkpoint."""

from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest

from pipelines.cli import main
from unet_med.data.manifest import manifest_sha256
from unet_med.tracking import (
    TRAINING_RUN_TAG,
    TrackingStoreError,
    log_evaluation,
    log_inference_run,
    plan_inference_tracking,
    training_run_for_checkpoint,
)
from unet_med.tracking.linked_runs import file_sha256, one_shot_run
from unet_med.tracking.run_record import write_run_record
from unet_med.tracking.server import free_loopback_port
from unet_med.tracking.store import default_tracking_uri, sqlite_store_uri


def test_one_shot_run_is_finished_or_failed_and_leaves_no_global_state(tmp_path):
    uri = default_tracking_uri()
    with one_shot_run(uri, experiment_name="runs", run_name="ok", tags={"k": "v"}) as finished:
        mlflow.log_metric("m", 1.0)
    with pytest.raises(RuntimeError, match="upload broke"):
        with one_shot_run(uri, experiment_name="runs", run_name="broken", tags={}) as failed:
            mlflow.log_metric("m", 2.0)
            raise RuntimeError("upload broke")
    client = mlflow.MlflowClient(uri)
    assert client.get_run(finished).info.status == "FINISHED"
    assert client.get_run(finished).data.tags["k"] == "v"
    assert client.get_run(failed).info.status == "FAILED"
    assert client.get_run(failed).data.metrics == {"m": 2.0}
    assert mlflow.active_run() is None
    assert not mlflow.is_tracking_uri_set() or mlflow.get_tracking_uri() != uri
    # the experiment keeps its artifacts next to the SQLite store, as a training's does
    experiment = client.get_experiment_by_name("runs")
    assert experiment.artifact_location == (tmp_path / "mlartifacts").resolve().as_uri()


def test_evaluation_run_is_linked_to_the_training_of_its_output_folder(tmp_path, demo_manifest):
    """It goes to the training's store (from the run record, not the working directory's), in the
    experiment <training experiment>-inference, with the test rows of the manifest as its dataset."""
    uri = sqlite_store_uri(tmp_path / "elsewhere")
    with one_shot_run(uri, experiment_name="tiny_bundle", run_name="training", tags={}) as training_id:
        pass
    experiment_id = mlflow.MlflowClient(uri).get_experiment_by_name("tiny_bundle").experiment_id
    write_run_record(tmp_path, tracking_uri=uri, experiment_id=experiment_id, run_id=training_id)
    manifest = demo_manifest(tmp_path / "data")
    csv = tmp_path / "eval" / "per_case_metrics.csv"
    csv.parent.mkdir()
    csv.write_text("subject_id,mean_dice\ncase0,0.5\n")
    run_id = log_evaluation(
        csv_path=csv,
        metrics={"test_mean_dice": 0.5, "test_hd95_mm_cell": float("nan")},
        output_dir=tmp_path,
        bundle_name="tiny_bundle",
        preset="paper",
        params={"eval.split": "test", "data.patch_size": [4, 4], "data.manifest": str(manifest)},
    )
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "tiny_bundle-inference"
    assert run.info.run_name.startswith("tiny_bundle-paper-eval-")
    assert run.data.metrics == {"test_mean_dice": 0.5}  # NaN left out
    assert run.data.params == {
        "eval.split": "test", "data.patch_size": "[4, 4]", "data.manifest": str(manifest),
    }
    assert run.data.tags[TRAINING_RUN_TAG] == training_id
    assert run.data.tags["unet_med.run_kind"] == "evaluation"
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "data/manifest [test]"
    assert dataset.dataset.digest == manifest_sha256(manifest)[:16]
    assert json.loads(dataset.dataset.profile)["cases"] == 1  # the demo manifest's one test image
    assert {(t.key, t.value) for t in dataset.tags} == {("mlflow.data.context", "testing")}
    artifacts = tmp_path / "elsewhere" / "mlartifacts"
    assert (artifacts / run_id / "artifacts" / "evaluation" / "per_case_metrics.csv").is_file()


def test_inference_run_goes_to_the_training_experiments_inference_experiment(tmp_path):
    training_dir = tmp_path / "training"
    uri = sqlite_store_uri(training_dir)
    with one_shot_run(uri, experiment_name="tiny_bundle", run_name="training", tags={}) as training_id:
        pass
    experiment_id = mlflow.MlflowClient(uri).get_experiment_by_name("tiny_bundle").experiment_id
    write_run_record(training_dir, tracking_uri=uri, experiment_id=experiment_id, run_id=training_id)
    checkpoint = training_dir / "models" / "model.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    report = tmp_path / "out" / "report.csv"
    report.parent.mkdir()
    report.write_text("scan_id,status\na,ok\n")
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        (scans / name).write_bytes(b"scan")

    plan = plan_inference_tracking(checkpoint)
    assert plan.tracking_uri == uri and plan.training.run_id == training_id
    run_id = log_inference_run(
        plan, bundle_name="other_name", bundle_version="1.0", checkpoint=checkpoint, report_path=report,
        status_counts={"ok": 3, "failed": 1}, seconds=2.5, params={"infer.tta": True}, input_dir=scans,
    )
    client = mlflow.MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.experiment_id != experiment_id
    # named after the training's experiment, not the bundle name the inference passed
    assert client.get_experiment(run.info.experiment_id).name == "tiny_bundle-inference"
    kind = client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"]
    assert kind == "custom_model_development"
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == "scans" and len(dataset.dataset.digest) == 16
    assert json.loads(dataset.dataset.source)["uri"] == str(scans.resolve())
    profile = json.loads(dataset.dataset.profile)
    assert profile == {"files": 2, "scans_ok": 3, "scans_failed": 1, "scans_skipped": 0}
    assert [t.value for t in dataset.tags] == ["inference"]
    assert run.info.run_name.startswith("other_name-infer-")
    assert run.data.metrics == {"scans_ok": 3, "scans_failed": 1, "scans_skipped": 0, "infer_seconds": 2.5}
    assert run.data.params == {
        "infer.checkpoint": str(checkpoint.resolve()),
        "infer.checkpoint_sha256": file_sha256(checkpoint),
        "infer.tta": "True",
    }
    assert run.data.tags[TRAINING_RUN_TAG] == training_id
    assert run.data.tags["unet_med.run_kind"] == "inference"


def test_no_store_known_and_a_broken_record_are_clear_errors(tmp_path):
    checkpoint = tmp_path / "models" / "model.pt"
    checkpoint.parent.mkdir()
    with pytest.raises(TrackingStoreError, match="no training run record.*pass --tracking-uri"):
        plan_inference_tracking(checkpoint)
    (tmp_path / "mlflow_run.json").write_text(json.dumps({"run_id": "x"}))
    with pytest.raises(TrackingStoreError, match="mlflow_run.json: not a training run record"):
        training_run_for_checkpoint(checkpoint)


@pytest.mark.slow
def test_tracked_inference_is_linked_to_its_training_run(shared_store_trainings, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    trained = shared_store_trainings
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
    experiment = client.get_experiment_by_name("unet2d_paper-inference")
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


@pytest.mark.slow
def test_track_with_an_unreachable_server_stops_before_segmenting(shared_store_trainings, tmp_path, capsys):
    trained = shared_store_trainings
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
