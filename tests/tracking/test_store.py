"""unet_med.tracking.store: one policy for tracking URIs, fail-fast checks of a store (missing
SQLite file, unwritable folder, unreachable server), and one new SQLite store shared by two
trainings started at the same time."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from pipelines.cli import main
from unet_med.tracking.server import free_loopback_port
from unet_med.tracking.store import (
    TrackingStoreError,
    check_tracking_store,
    check_tracking_uri,
    default_tracking_uri,
    existing_store_uri,
    resolve_tracking_uri,
)


def test_default_store_is_the_working_directorys_sqlite_store_and_file_paths_are_refused(
    tmp_path, monkeypatch
):
    """Runs started from one folder share one store, whatever their output folder; an explicit URI
    and $MLFLOW_TRACKING_URI win."""
    monkeypatch.chdir(tmp_path)
    expected = f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_tracking_uri(None, tmp_path / "run1") == expected
    assert resolve_tracking_uri("", tmp_path / "run2") == expected == default_tracking_uri()
    assert resolve_tracking_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    for bad in (str(tmp_path / "mlruns"), f"file://{tmp_path}/mlruns"):
        with pytest.raises(TrackingStoreError, match="no longer supports the file store.*sqlite:///"):
            resolve_tracking_uri(bad, tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri(None, tmp_path / "run1") == "http://127.0.0.1:5999"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", str(tmp_path / "mlruns"))
    with pytest.raises(TrackingStoreError, match=r"\$MLFLOW_TRACKING_URI: .*file store"):
        default_tracking_uri()


def test_a_file_uri_is_refused_by_readers_too(tmp_path):
    """One policy: a reader may name an existing store by its folder or file, never a file store."""
    with pytest.raises(TrackingStoreError, match="no longer supports the file store.*sqlite:///"):
        existing_store_uri(f"file://{tmp_path}/mlruns")


def test_unreachable_server_fails_within_seconds_with_a_clear_message():
    uri = f"http://127.0.0.1:{free_loopback_port()}"
    start = time.monotonic()
    with pytest.raises(TrackingStoreError, match="cannot reach the MLflow tracking server"):
        check_tracking_uri(uri, timeout_s=2)
    assert time.monotonic() - start < 10


def test_unwritable_store_folder_is_refused(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    with pytest.raises(TrackingStoreError, match="not writable"):
        check_tracking_uri(f"sqlite:///{blocker}/sub/mlflow.db")


def test_missing_sqlite_store_is_an_error_and_is_not_created(tmp_path, capsys):
    missing = tmp_path / "typo" / "mlflow.db"
    with pytest.raises(TrackingStoreError, match="does not exist"):
        check_tracking_store(f"sqlite:///{missing}")
    with pytest.raises(TrackingStoreError, match="no MLflow store in folder"):
        existing_store_uri(tmp_path)
    assert main(["runs", "compare", "--tracking-uri", str(missing), "--experiment", "x"]) == 1
    assert "no MLflow store at" in capsys.readouterr().err
    assert not missing.exists() and not missing.parent.exists()


def test_unreachable_server_fails_within_seconds(capsys):
    port = free_loopback_port()  # nothing listens there: connection refused
    start = time.monotonic()
    code = main(["runs", "compare", "--tracking-uri", f"http://127.0.0.1:{port}", "--experiment", "x"])
    assert code == 1 and time.monotonic() - start < 5
    assert f"cannot reach the MLflow tracking server at http://127.0.0.1:{port}" in capsys.readouterr().err
    # a listener that accepts but never answers: the probe gives up after --timeout seconds
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        code = main(["runs", "compare", "--tracking-uri", url, "--experiment", "x", "--timeout", "1"])
        assert code == 1 and time.monotonic() - start < 5
    assert "cannot reach" in capsys.readouterr().err


def test_existing_store_uri_forms(runs_store, tmp_path):
    db = Path(runs_store["root"]) / "mlflow.db"
    assert existing_store_uri(runs_store["root"]) == f"sqlite:///{db.resolve()}"
    assert existing_store_uri(db) == f"sqlite:///{db.resolve()}"
    assert existing_store_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    with pytest.raises(TrackingStoreError, match="no MLflow store at"):
        existing_store_uri(tmp_path / "missing.db")


@pytest.mark.slow
def test_two_trainings_share_a_new_sqlite_store(shared_store_trainings, capsys):
    from mlflow.tracking import MlflowClient

    trained = shared_store_trainings
    client = MlflowClient(trained["uri"])
    experiments = [e.name for e in client.search_experiments()]
    assert experiments.count("unet2d_paper") == 1  # created once, used by both
    runs = client.search_runs([client.get_experiment_by_name("unet2d_paper").experiment_id])
    # the training runs: test_linked_runs logs an inference run into this (session-wide) store too
    runs = [run for run in runs if "unet_med.run_kind" not in run.data.tags]
    assert len(runs) == 2
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
