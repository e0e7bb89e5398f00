"""Comparing the training runs of one MLflow experiment: a table users can read, and a curve plot.

``mlflow.search_runs`` gives one DataFrame row per run (latest value of every metric, every param
and tag); this module keeps what a comparison needs: the run's name and id, the chosen metric
(rows sorted best first, runs that never logged it last with an empty cell), the summary metrics
the training bundles log (``best_val_mean_dice``, ``epoch_time_s``, ...), and only the params
whose values differ between the runs. The validation curves come from the metric history
(``MlflowClient.get_metric_history``, step = epoch). Works the same on an embedded SQLite store
and on a tracking server URL.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from unet_med.atomic_files import atomic_output
from unet_med.plots import plot_metric_curves
from unet_med.tracking.run_record import RUN_KIND_TAG
from unet_med.tracking.store import check_tracking_store, using_tracking_uri

#: Metric the table is sorted by unless another is chosen (run-level, logged by the bundles).
DEFAULT_SORT_METRIC = "best_val_mean_dice"
#: Metric whose per-epoch history is drawn in the curve plot.
DEFAULT_CURVE_METRIC = "val_mean_dice"
#: Run-level metrics shown when present, in this order (names agreed with the training bundles).
SUMMARY_METRICS: tuple[str, ...] = (
    "best_val_mean_dice",
    "best_epoch",
    "val_mean_dice",
    "train_loss",
    "epoch_time_s",
    "samples_per_s",
    "peak_memory_mb",
)
# Substrings of metric names where a smaller value is better (losses, times, memory, distances).
_LOWER_IS_BETTER = ("loss", "time_s", "memory_mb", "error", "hausdorff", "distance")

Goal = Literal["max", "min"]


class ExperimentNotFoundError(LookupError):
    """The experiment name is not in the store; the message lists the experiments that are."""


class RunNotFoundError(LookupError):
    """A requested run id (or id prefix) matches no run of the experiment."""


def metric_goal(metric: str) -> Goal:
    """``"min"`` for losses, times, memory and distances, ``"max"`` otherwise (Dice, throughput)."""
    return "min" if any(part in metric for part in _LOWER_IS_BETTER) else "max"


def find_experiment(client, name: str):
    """The experiment called ``name`` in ``client``'s store.

    Raises:
        ExperimentNotFoundError: listing the names of the experiments that exist.
    """
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment
    names = sorted(e.name for e in client.search_experiments())
    listing = ", ".join(repr(n) for n in names) if names else "none (no run has been logged there yet)"
    raise ExperimentNotFoundError(
        f"experiment {name!r} not found in {client.tracking_uri}; experiments there: {listing}"
    )


def differing_params(runs: pd.DataFrame) -> list[str]:
    """Names of the ``params.*`` columns whose value is not the same in every row.

    A param a run did not log counts as its own value (empty), so a param only some runs have is
    listed. Returns the names without the ``params.`` prefix, sorted.
    """
    names = []
    for column in runs.columns:
        if not column.startswith("params."):
            continue
        values = runs[column].astype(object).where(runs[column].notna(), None)
        if len(set(values.tolist())) > 1:
            names.append(column.removeprefix("params."))
    return sorted(names)


@dataclass
class RunComparison:
    """The runs of one experiment, best first by ``metric``.

    ``table`` has one row per run: ``run`` (run name), ``run_id``, ``status``, then ``metric``,
    the other summary and per-class Dice metrics present, then the differing params (plain names,
    no ``params.`` prefix). Missing values are NaN (metrics) or None (params).
    """

    tracking_uri: str
    experiment_name: str
    experiment_id: str
    metric: str
    goal: Goal
    table: pd.DataFrame
    varying_params: list[str]
    logged_metrics: list[str] = field(default_factory=list)

    @property
    def metric_missing(self) -> bool:
        """True when no run of the comparison has logged ``metric``."""
        return bool(self.table[self.metric].isna().all()) if len(self.table) else True

    def to_text(self, *, float_digits: int = 4) -> str:
        """The table as fixed-width text: run ids shortened to 8 characters, empty cells for
        missing values."""
        shown = self.table.copy()
        shown["run_id"] = shown["run_id"].str[:8]
        for column in shown.columns:
            if pd.api.types.is_float_dtype(shown[column]):
                shown[column] = shown[column].map(lambda v: "" if _is_missing(v) else f"{v:.{float_digits}g}")
            else:
                shown[column] = shown[column].map(lambda v: "" if _is_missing(v) else str(v))
        return shown.to_string(index=False)


def _is_missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def compare_runs(
    tracking_uri: str,
    experiment: str,
    *,
    metric: str = DEFAULT_SORT_METRIC,
    goal: Goal | None = None,
    filter_string: str = "",
    run_ids: list[str] | None = None,
    kind: str | None = "training",
    max_runs: int | None = None,
    timeout_s: float = 5.0,
) -> RunComparison:
    """Read the runs of ``experiment`` at ``tracking_uri`` with ``mlflow.search_runs`` and build the
    comparison table.

    Args:
        tracking_uri: ``sqlite:///...`` store or ``http(s)://`` server (checked first, see
            :func:`unet_med.tracking.store.check_tracking_store`, ``timeout_s`` seconds).
        experiment: experiment name (the bundles default to the bundle's name).
        metric: metric to sort by; ``goal`` defaults to :func:`metric_goal` of it.
        filter_string: MLflow search filter, e.g. ``"params.`net.preset` = 'paper'"``.
        run_ids: keep only these runs (full ids or unique prefixes).
        kind: keep only runs of this kind (tag ``unet_med.run_kind``: ``"evaluation"``,
            ``"inference"``, ``"cross_validation"`` (the parents of fold runs); runs without the
            tag are ``"training"``); None keeps all. Evaluation and inference runs live in the
            experiment ``<experiment>-inference``, which is searched too for those kinds (and
            for None).
        max_runs: keep the best ``max_runs`` rows after sorting.

    Raises:
        TrackingStoreError: the store is missing or the server unreachable.
        ExperimentNotFoundError: ``experiment`` does not exist (message lists those that do).
        RunNotFoundError: an entry of ``run_ids`` matches no run.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    from unet_med.tracking.linked_runs import inference_experiment_name

    check_tracking_store(tracking_uri, timeout_s=timeout_s)
    client = MlflowClient(tracking_uri)
    found = find_experiment(client, experiment)
    experiment_ids = [found.experiment_id]
    if kind not in ("training", "cross_validation"):
        linked = client.get_experiment_by_name(inference_experiment_name(found.name))
        if linked is not None and linked.experiment_id != found.experiment_id:
            experiment_ids.append(linked.experiment_id)
    goal = goal or metric_goal(metric)
    with using_tracking_uri(tracking_uri):
        runs = mlflow.search_runs(
            experiment_ids=experiment_ids, filter_string=filter_string, output_format="pandas"
        )
    if kind is not None and not runs.empty:
        kinds = runs.get(f"tags.{RUN_KIND_TAG}", pd.Series([None] * len(runs), index=runs.index))
        runs = runs[kinds.fillna("training") == kind]
    runs = _select_runs(runs, run_ids, experiment)
    if runs.empty:  # search_runs returns a frame without columns when there is no run
        runs = pd.DataFrame(columns=["run_id", "status", "tags.mlflow.runName"])

    logged = sorted(
        c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics.") and runs[c].notna().any()
    )
    metric_column = f"metrics.{metric}"
    if metric_column not in runs.columns:
        runs[metric_column] = float("nan")
    runs = runs.sort_values(
        metric_column, ascending=(goal == "min"), na_position="last", kind="stable"
    ).reset_index(drop=True)
    if max_runs is not None:
        runs = runs.head(max_runs)

    def logged_by_some_run(name: str) -> bool:  # search_runs has columns for every run of the experiment
        column = f"metrics.{name}"
        return column in runs.columns and bool(runs[column].notna().any())

    shown_metrics = [metric] + [m for m in SUMMARY_METRICS if m != metric and logged_by_some_run(m)]
    shown_metrics += [
        name
        for name in sorted(c.removeprefix("metrics.") for c in runs.columns)
        if name.startswith("val_dice_") and name not in shown_metrics and logged_by_some_run(name)
    ]
    varying = differing_params(runs)

    table = pd.DataFrame(
        {
            "run": runs.get("tags.mlflow.runName", pd.Series([None] * len(runs))).tolist(),
            "run_id": runs["run_id"].tolist(),
            "status": runs["status"].tolist(),
        }
    )
    for name in shown_metrics:
        table[name] = pd.to_numeric(runs[f"metrics.{name}"], errors="coerce").astype(float).tolist()
    for name in varying:
        values = runs[f"params.{name}"]
        table[name] = values.astype(object).where(values.notna(), None).tolist()
    return RunComparison(
        tracking_uri=tracking_uri,
        experiment_name=found.name,
        experiment_id=found.experiment_id,
        metric=metric,
        goal=goal,
        table=table,
        varying_params=varying,
        logged_metrics=logged,
    )


def _select_runs(runs: pd.DataFrame, run_ids: list[str] | None, experiment: str) -> pd.DataFrame:
    if not run_ids or runs.empty:
        if run_ids:
            raise RunNotFoundError(
                f"runs {', '.join(run_ids)} not found: experiment {experiment!r} has no runs"
            )
        return runs
    keep = []
    for wanted in run_ids:
        matches = runs.index[runs["run_id"].str.startswith(wanted)].tolist()
        if len(matches) != 1:
            problem = "matches no run" if not matches else f"matches {len(matches)} runs"
            raise RunNotFoundError(
                f"run id {wanted!r} {problem} of experiment {experiment!r}; runs there: "
                + ", ".join(runs["run_id"].str[:8])
            )
        keep.extend(m for m in matches if m not in keep)
    return runs.loc[keep]


def validation_curves(tracking_uri: str, run_ids: list[str], metric: str = DEFAULT_CURVE_METRIC) -> dict:
    """Per-run history of ``metric`` as ``{run_id: [(step, value), ...]}`` sorted by step (epochs
    for the bundles' validation metrics); runs without that metric map to an empty list."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    curves = {}
    for run_id in run_ids:
        history = client.get_metric_history(run_id, metric)
        curves[run_id] = sorted((m.step, m.value) for m in history)
    return curves


def plot_validation_curves(
    comparison: RunComparison, out_path: str | Path, *, metric: str = DEFAULT_CURVE_METRIC
) -> list[str]:
    """Write a PNG overlaying the ``metric`` history (x: step = epoch) of the comparison's runs
    (:func:`unet_med.plots.plot_metric_curves`). Returns the ids of the runs that had no history
    of ``metric`` (not drawn)."""
    table = comparison.table
    history = validation_curves(comparison.tracking_uri, table["run_id"].tolist(), metric)
    curves = {
        f"{run_name or ''} ({run_id[:8]})": history[run_id]
        for run_name, run_id in zip(table["run"], table["run_id"], strict=True)
    }
    plot_metric_curves(curves, out_path, metric=metric, title=f"{comparison.experiment_name}: {metric}")
    return [run_id for run_id in table["run_id"] if not history[run_id]]


def write_table_csv(comparison: RunComparison, out_path: str | Path) -> None:
    """Write the comparison table (full run ids, empty cells for missing values) as CSV, atomically."""
    with atomic_output(out_path) as partial:
        comparison.table.to_csv(partial, index=False)


def safe_file_stem(name: str) -> str:
    """``name`` with every character other than letters, digits, ``.``, ``_``, ``-`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"
