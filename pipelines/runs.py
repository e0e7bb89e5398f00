"""``unet-med runs compare``: the runs of one MLflow experiment, best first, with the params that
differ, plus a PNG of their validation curves (and optionally the table as CSV).

Works on the embedded SQLite store trainings write (by default ``./mlflow.db`` in the folder they
were started from; ``--tracking-uri .`` or ``sqlite:///.../mlflow.db``) and on a tracking server
(``http://127.0.0.1:5000``). It ends with the URL (or ``mlflow ui`` command) that opens the same
runs in MLflow's runs table.
"""

from __future__ import annotations

import argparse
import os
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "runs",
        help="compare training runs tracked in MLflow",
        description="Work with the training runs tracked in MLflow.",
    )
    actions = parser.add_subparsers(dest="runs_command", metavar="ACTION", required=True)
    compare = actions.add_parser(
        "compare",
        help="table of an experiment's runs, best first, with the params that differ; PNG of their curves",
        description="Read an experiment's runs with mlflow.search_runs, print them sorted by a metric "
        "(best first) with the params whose values differ between runs, and write a PNG overlaying "
        "their validation curves. Runs that never logged the metric come last with empty cells.",
    )
    compare.add_argument(
        "--experiment", required=True, help="experiment name (the bundles use the bundle name)"
    )
    compare.add_argument(
        "--tracking-uri",
        default=None,
        help="sqlite:///.../mlflow.db, a folder holding mlflow.db, or a server URL like "
        "http://127.0.0.1:5000 (default: $MLFLOW_TRACKING_URI, else ./mlflow.db, the store "
        "trainings started from this folder write to)",
    )
    compare.add_argument("--metric", default=None, help="metric to sort by (default: best_val_mean_dice)")
    compare.add_argument(
        "--goal",
        choices=("max", "min"),
        default=None,
        help="whether larger or smaller is better (default: min for losses/times/memory, else max)",
    )
    compare.add_argument(
        "--run",
        dest="run_ids",
        action="append",
        default=None,
        metavar="RUN_ID",
        help="compare only this run (full id or unique prefix); repeatable",
    )
    compare.add_argument(
        "--filter", default="", help="MLflow search filter, e.g. \"params.`net.preset` = 'paper'\""
    )
    compare.add_argument(
        "--kind",
        choices=("training", "evaluation", "inference", "cross_validation", "all"),
        default="training",
        help="which runs to list (tag unet_med.run_kind; default: training runs, folds included; "
        "cross_validation: the parent runs of folds; evaluation/inference runs are read from "
        "the experiment <experiment>-inference)",
    )
    compare.add_argument("--max-runs", type=int, default=None, help="keep only the best N runs")
    compare.add_argument("--csv", default=None, help="also write the table to this CSV file")
    compare.add_argument(
        "--plot", default=None, help="PNG of the validation curves (default: run_comparison_<experiment>.png)"
    )
    compare.add_argument("--no-plot", action="store_true", help="do not write the PNG")
    compare.add_argument(
        "--curve-metric", default=None, help="metric drawn in the PNG (default: val_mean_dice)"
    )
    compare.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds to wait for a tracking server to answer (default: 5)",
    )
    compare.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.runs_command == "compare":
        return compare(args)
    raise AssertionError(args.runs_command)  # argparse restricts the choices


def compare(args: argparse.Namespace) -> int:
    # MLflow's HTTP client retries for minutes by default; a comparison should fail quickly instead.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

    from mlflow.exceptions import MlflowException

    from unet_med.tracking.comparison import (
        DEFAULT_CURVE_METRIC,
        DEFAULT_SORT_METRIC,
        ExperimentNotFoundError,
        RunNotFoundError,
        compare_runs,
        plot_validation_curves,
        safe_file_stem,
        write_table_csv,
    )
    from unet_med.tracking.store import TrackingStoreError, default_tracking_uri, existing_store_uri
    from unet_med.tracking.ui import open_ui_hint

    metric = args.metric or DEFAULT_SORT_METRIC
    if args.max_runs is not None and args.max_runs < 1:
        print(f"error: --max-runs must be at least 1, got {args.max_runs}", file=sys.stderr)
        return 2
    try:
        uri = existing_store_uri(args.tracking_uri or default_tracking_uri())
        comparison = compare_runs(
            uri,
            args.experiment,
            metric=metric,
            goal=args.goal,
            filter_string=args.filter,
            run_ids=args.run_ids,
            kind=None if args.kind == "all" else args.kind,
            max_runs=args.max_runs,
            timeout_s=args.timeout,
        )
    except (TrackingStoreError, ExperimentNotFoundError, RunNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except MlflowException as error:  # e.g. a --filter MLflow cannot parse
        print(
            f"error: MLflow refused the search of experiment {args.experiment!r}: {error.message}",
            file=sys.stderr,
        )
        return 1

    n = len(comparison.table)
    print(
        f"experiment {comparison.experiment_name!r} ({comparison.experiment_id}) at {uri}: {n} run(s), "
        f"sorted by {metric} ({'higher' if comparison.goal == 'max' else 'lower'} is better)"
    )
    if n == 0:
        print("no runs to compare")
        print(f"MLflow UI: {open_ui_hint(uri, comparison.experiment_id)}")
        return 0
    if comparison.metric_missing:
        print(
            f"warning: no run has logged {metric!r}; metrics logged: "
            f"{', '.join(comparison.logged_metrics) or 'none'}",
            file=sys.stderr,
        )
    print(comparison.to_text())
    if comparison.varying_params:
        print(f"params that differ: {', '.join(comparison.varying_params)}")
    else:
        print("params that differ: none (all runs share the same params)")

    if args.csv:
        write_table_csv(comparison, args.csv)
        print(f"table written to {args.csv}")
    if not args.no_plot:
        curve_metric = args.curve_metric or DEFAULT_CURVE_METRIC
        plot = args.plot or f"run_comparison_{safe_file_stem(comparison.experiment_name)}.png"
        without = plot_validation_curves(comparison, plot, metric=curve_metric)
        print(f"{curve_metric} curves of {n - len(without)} run(s) written to {plot}")
        if without:
            print(f"no {curve_metric} history in run(s): {', '.join(r[:8] for r in without)}")
    print(f"MLflow UI: {open_ui_hint(uri, comparison.experiment_id)}")
    return 0
