"""``unet-med runs compare`` and unet_med.run_comparison on runs logged with the plain MLflow API
under the metric/param/tag names the training bundles use."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib import colors
from matplotlib.image import imread

from pipelines.cli import main
from unet_med.run_comparison import (
    ExperimentNotFoundError,
    RunNotFoundError,
    compare_runs,
    differing_params,
    metric_goal,
)
from unet_med.tracking_store import (
    TrackingStoreError,
    check_tracking_store,
    free_loopback_port,
    resolve_tracking_uri,
)

COMMON_PARAMS = {
    "net.preset": "paper",
    "net.spatial_dims": "2",
    "optim.name": "SGD",
    "optim.lr": "0.01",
    "data.manifest_sha256": "ab" * 32,
}


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


@pytest.fixture(scope="module")
def store(tmp_path_factory):
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


def test_rows_best_first_missing_metric_last_and_only_differing_params(store):
    comparison = compare_runs(store["uri"], "unet2d_paper")
    table = comparison.table
    ids = store["ids"]
    assert table["run_id"].tolist() == [ids["wide"], ids["narrow"], ids["crashed"]]
    assert table["best_val_mean_dice"].tolist()[:2] == [0.7, 0.6]
    assert np.isnan(table["best_val_mean_dice"].iloc[2])
    # params shared by every run (preset, lr, manifest hash) are left out
    assert comparison.varying_params == ["net.base_width"]
    assert table["net.base_width"].tolist() == ["16", "8", "4"]
    assert "optim.lr" not in table.columns and "net.preset" not in table.columns
    # the failed run shows empty cells, not NaN text
    crashed_line = comparison.to_text().splitlines()[3]
    assert ids["crashed"][:8] in crashed_line and "nan" not in crashed_line.lower()
    assert "val_dice_cell" in table.columns


def test_evaluation_runs_are_listed_apart_from_training_runs(store):
    ids = store["ids"]
    # the default table (training runs) left the evaluation run out, see the test above
    comparison = compare_runs(store["uri"], "unet2d_paper", kind="evaluation", metric="test_mean_dice")
    assert comparison.table["run_id"].tolist() == [ids["evaluation"]]
    assert comparison.table["test_mean_dice"].tolist() == [0.66]
    everything = compare_runs(store["uri"], "unet2d_paper", kind=None)
    assert set(everything.table["run_id"]) == set(ids.values())


def test_lower_is_better_metrics_sort_ascending(store):
    assert metric_goal("train_loss") == "min" and metric_goal("epoch_time_s") == "min"
    assert metric_goal("val_mean_dice") == "max" and metric_goal("samples_per_s") == "max"
    comparison = compare_runs(store["uri"], "unet2d_paper", metric="train_loss")
    assert comparison.goal == "min"
    assert comparison.table["train_loss"].tolist() == [0.3, 0.5, 1.2]


def test_differing_params_counts_a_missing_param_as_a_value():
    runs = pd.DataFrame(
        {"params.a": ["1", "1"], "params.b": ["x", None], "params.c": ["1", "2"], "metrics.m": [1, 2]}
    )
    assert differing_params(runs) == ["b", "c"]


def test_unknown_experiment_lists_existing_ones(store):
    with pytest.raises(ExperimentNotFoundError) as caught:
        compare_runs(store["uri"], "unet2d_papr")
    message = str(caught.value)
    assert "'unet2d_papr' not found" in message
    for name in ("unet2d_paper", "unet3d", "empty"):
        assert repr(name) in message


def test_run_selection_by_prefix_and_unknown_id(store):
    wide = store["ids"]["wide"]
    comparison = compare_runs(store["uri"], "unet2d_paper", run_ids=[wide[:10]])
    assert comparison.table["run_id"].tolist() == [wide]
    with pytest.raises(RunNotFoundError, match="'zzzz' matches no run"):
        compare_runs(store["uri"], "unet2d_paper", run_ids=["zzzz"])


def _has_colour(image: np.ndarray, colour: str) -> bool:
    rgb = np.array(colors.to_rgb(colour))
    return bool((np.abs(image[..., :3] - rgb).max(axis=-1) < 0.02).any())


def test_cli_prints_sorted_table_writes_csv_and_curves_png(store, tmp_path, capsys):
    csv_path, png_path = tmp_path / "table.csv", tmp_path / "plots" / "curves.png"
    code = main(
        [
            "runs",
            "compare",
            "--tracking-uri",
            str(store["root"]),
            "--experiment",
            "unet2d_paper",
            "--csv",
            str(csv_path),
            "--plot",
            str(png_path),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    ids = store["ids"]
    positions = [out.index(ids[key][:8]) for key in ("wide", "narrow", "crashed")]
    assert positions == sorted(positions)
    assert "params that differ: net.base_width" in out
    table = pd.read_csv(csv_path)
    assert table["run_id"].tolist() == [ids["wide"], ids["narrow"], ids["crashed"]]
    assert table["best_val_mean_dice"].isna().tolist() == [False, False, True]
    assert not list(tmp_path.glob("**/.*.partial"))
    image = imread(png_path)
    assert image.shape[:2] == (450, 700)
    # two runs have a val_mean_dice history (first two colours of the cycle), the failed run none
    assert _has_colour(image, "C0") and _has_colour(image, "C1") and not _has_colour(image, "C2")
    assert f"no val_mean_dice history in run(s): {ids['crashed'][:8]}" in out


def test_cli_unknown_experiment_and_empty_experiment(store, capsys):
    assert main(["runs", "compare", "--tracking-uri", store["uri"], "--experiment", "nope", "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert "experiment 'nope' not found" in err and "'unet3d'" in err
    assert main(["runs", "compare", "--tracking-uri", store["uri"], "--experiment", "empty"]) == 0
    assert "no runs to compare" in capsys.readouterr().out


def test_cli_bad_filter_is_one_clear_error(store, capsys):
    code = main(
        [
            "runs",
            "compare",
            "--tracking-uri",
            store["uri"],
            "--experiment",
            "unet2d_paper",
            "--filter",
            "params.net.base_width ==== 8",
            "--no-plot",
        ]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "MLflow refused the search of experiment 'unet2d_paper'" in err and "Traceback" not in err


def test_missing_sqlite_store_is_an_error_and_is_not_created(tmp_path, capsys):
    missing = tmp_path / "typo" / "mlflow.db"
    with pytest.raises(TrackingStoreError, match="does not exist"):
        check_tracking_store(f"sqlite:///{missing}")
    with pytest.raises(TrackingStoreError, match="no MLflow store in folder"):
        resolve_tracking_uri(tmp_path)
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


def test_resolve_tracking_uri_forms(store, tmp_path):
    db = Path(store["root"]) / "mlflow.db"
    assert resolve_tracking_uri(store["root"]) == f"sqlite:///{db.resolve()}"
    assert resolve_tracking_uri(db) == f"sqlite:///{db.resolve()}"
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    with pytest.raises(TrackingStoreError, match="no MLflow store at"):
        resolve_tracking_uri(tmp_path / "missing.db")
