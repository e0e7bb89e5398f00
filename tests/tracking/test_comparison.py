"""unet_med.tracking.comparison and ``unet-med runs compare`` on runs logged with the plain MLflow
API under the metric/param/tag names the training bundles use."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread

from pipelines.cli import main
from unet_med.tracking.comparison import (
    ExperimentNotFoundError,
    RunNotFoundError,
    compare_runs,
    differing_params,
    metric_goal,
)


def test_rows_best_first_missing_metric_last_and_only_differing_params(runs_store):
    comparison = compare_runs(runs_store["uri"], "unet2d_paper")
    table = comparison.table
    ids = runs_store["ids"]
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


def test_evaluation_runs_are_listed_apart_from_training_runs(runs_store):
    ids = runs_store["ids"]
    # the default table (training runs) left the evaluation run out, see the test above
    comparison = compare_runs(runs_store["uri"], "unet2d_paper", kind="evaluation", metric="test_mean_dice")
    assert comparison.table["run_id"].tolist() == [ids["evaluation"]]
    assert comparison.table["test_mean_dice"].tolist() == [0.66]
    everything = compare_runs(runs_store["uri"], "unet2d_paper", kind=None)
    assert set(everything.table["run_id"]) == set(ids.values())


def test_lower_is_better_metrics_sort_ascending(runs_store):
    assert metric_goal("train_loss") == "min" and metric_goal("epoch_time_s") == "min"
    assert metric_goal("val_mean_dice") == "max" and metric_goal("samples_per_s") == "max"
    comparison = compare_runs(runs_store["uri"], "unet2d_paper", metric="train_loss")
    assert comparison.goal == "min"
    assert comparison.table["train_loss"].tolist() == [0.3, 0.5, 1.2]


def test_differing_params_counts_a_missing_param_as_a_value():
    runs = pd.DataFrame(
        {"params.a": ["1", "1"], "params.b": ["x", None], "params.c": ["1", "2"], "metrics.m": [1, 2]}
    )
    assert differing_params(runs) == ["b", "c"]


def test_unknown_experiment_lists_existing_ones(runs_store):
    with pytest.raises(ExperimentNotFoundError) as caught:
        compare_runs(runs_store["uri"], "unet2d_papr")
    message = str(caught.value)
    assert "'unet2d_papr' not found" in message
    for name in ("unet2d_paper", "unet3d", "empty"):
        assert repr(name) in message


def test_run_selection_by_prefix_and_unknown_id(runs_store):
    wide = runs_store["ids"]["wide"]
    comparison = compare_runs(runs_store["uri"], "unet2d_paper", run_ids=[wide[:10]])
    assert comparison.table["run_id"].tolist() == [wide]
    with pytest.raises(RunNotFoundError, match="'zzzz' matches no run"):
        compare_runs(runs_store["uri"], "unet2d_paper", run_ids=["zzzz"])


def test_cli_prints_sorted_table_writes_csv_and_curves_png(runs_store, tmp_path, capsys, has_colour):
    csv_path, png_path = tmp_path / "table.csv", tmp_path / "plots" / "curves.png"
    code = main(
        [
            "runs",
            "compare",
            "--tracking-uri",
            str(runs_store["root"]),
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
    ids = runs_store["ids"]
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
    assert has_colour(image, "C0") and has_colour(image, "C1") and not has_colour(image, "C2")
    assert f"no val_mean_dice history in run(s): {ids['crashed'][:8]}" in out


def test_cli_unknown_experiment_and_empty_experiment(runs_store, capsys):
    uri = runs_store["uri"]
    assert main(["runs", "compare", "--tracking-uri", uri, "--experiment", "nope", "--no-plot"]) == 1
    err = capsys.readouterr().err
    assert "experiment 'nope' not found" in err and "'unet3d'" in err
    assert main(["runs", "compare", "--tracking-uri", runs_store["uri"], "--experiment", "empty"]) == 0
    assert "no runs to compare" in capsys.readouterr().out


def test_cli_bad_filter_is_one_clear_error(runs_store, capsys):
    code = main(
        [
            "runs",
            "compare",
            "--tracking-uri",
            runs_store["uri"],
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
