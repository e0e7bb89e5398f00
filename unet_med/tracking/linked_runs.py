"""MLflow runs linked to a training run: the evaluation of a trained model on its test split, and
batch inference with its checkpoint (``unet-med infer --track``).

A training writes ``<output_dir>/mlflow_run.json`` (its store URI, experiment and run id, see
:mod:`unet_med.tracking.run_record`) next to ``<output_dir>/models/model.pt``. An evaluation or
inference run is logged to the same store with the tag ``unet_med.training_run_id``, so the MLflow
UI leads from a model's validation curve to its test-set metrics and to the scans it was applied
to. An inference run holds the batch's figures as metrics and ``report.csv`` (scan ids and relative
sources, never patient tags) as an artifact. Both log the data they read as dataset inputs
(:mod:`unet_med.tracking.datasets`): the manifest's test rows (context ``testing``), the folder of
scans (context ``inference``).

They go to their own experiment, ``<training experiment>-inference``
(:func:`inference_experiment_name`), not to the training experiment. Why an experiment rather than
a tag that views filter on: MLflow's runs table has no saved default filter, so with a tag every
user would have to type the filter on every visit, and the table's metric columns and charts
would mix validation Dice with test Dice and scan counts. In their own experiment the training
table stays a table of trainings, and the evaluations sit side by side in a table of their own,
with the same columns. The tag ``unet_med.run_kind`` still tells the kinds apart, and
``unet-med runs compare --kind evaluation`` finds them under the training experiment's name.

Each of these runs is written in one go by :func:`one_shot_run` (``mlflow.start_run`` as a
context manager: FINISHED when the block ends, FAILED when it raises).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet_med.tracking.run_record import (
    RUN_FILE,
    RUN_KIND_TAG,
    TRAINING_RUN_TAG,
    TrainingRunRecord,
    bundle_tags,
    param_value,
    read_run_record,
    run_name_for,
)
from unet_med.tracking.store import (
    TrackingStoreError,
    artifact_location_for,
    check_tracking_store,
    check_tracking_uri,
    get_or_create_experiment,
    prepare_store,
    resolve_tracking_uri,
    using_tracking_uri,
)

__all__ = [
    "INFERENCE_EXPERIMENT_SUFFIX",
    "inference_experiment_name",
    "TRAINING_RUN_TAG",
    "TrainingRunRecord",
    "one_shot_run",
    "log_evaluation",
    "training_run_for_checkpoint",
    "file_sha256",
    "InferenceTracking",
    "plan_inference_tracking",
    "log_inference_run",
]


#: Suffix of the experiment holding a training experiment's evaluation and inference runs.
INFERENCE_EXPERIMENT_SUFFIX = "-inference"


def inference_experiment_name(training_experiment: str) -> str:
    """``<training_experiment>-inference``: where evaluation and inference runs of the models of
    ``training_experiment`` go (see the module docstring for why)."""
    if training_experiment.endswith(INFERENCE_EXPERIMENT_SUFFIX):
        return training_experiment
    return training_experiment + INFERENCE_EXPERIMENT_SUFFIX


def _training_experiment_name(tracking_uri: str, training: TrainingRunRecord | None) -> str | None:
    """The name of the training's experiment when it lives in ``tracking_uri``'s store."""
    if training is None or training.tracking_uri != tracking_uri or training.experiment_id is None:
        return None
    from mlflow.exceptions import MlflowException

    try:
        return prepare_store(tracking_uri).get_experiment(training.experiment_id).name
    except MlflowException:
        return None


@contextlib.contextmanager
def one_shot_run(
    tracking_uri: str,
    *,
    experiment_name: str,
    run_name: str,
    tags: Mapping[str, str],
    experiment_id: str | None = None,
) -> Iterator[str]:
    """Open an MLflow run for the block and yield its id; log to it with the fluent API
    (``mlflow.log_metrics``, ``mlflow.log_params``, ``mlflow.log_artifact``).

    The run is created in ``experiment_id`` when given, else in ``experiment_name`` (created
    with its artifacts next to an SQLite store when missing). It ends FINISHED when the block
    ends and FAILED when the block raises (``mlflow.start_run``'s own guarantee). The store is
    opened first under the creation lock (:func:`~unet_med.tracking.store.prepare_store`), and
    ``tracking_uri`` is the process's tracking URI only inside the block.
    """
    import mlflow

    client = prepare_store(tracking_uri)
    if experiment_id is None:
        experiment_id = get_or_create_experiment(client, experiment_name, artifact_location_for(tracking_uri))
    with using_tracking_uri(tracking_uri), mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name, tags=dict(tags)
    ) as run:
        yield run.info.run_id


# -- evaluation ---------------------------------------------------------------------------------
def log_evaluation(
    *,
    csv_path: str | os.PathLike,
    metrics: Mapping[str, float],
    output_dir: str | os.PathLike,
    bundle_name: str,
    preset: str = "unknown",
    bundle_version: str = "0.0.0",
    tracking_uri: str | None = None,
    experiment_name: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> str:
    """Record an evaluation as its own MLflow run (``<bundle>-<preset>-eval-<time>``) with the
    summary ``metrics`` (NaN values left out), ``params`` and the per-case CSV as artifact
    ``evaluation/``; linked to the training run of ``output_dir`` by the tag
    ``unet_med.training_run_id`` when that run is known. Returns the run id.

    The store is ``tracking_uri`` when given, else the training's (from its run record), else the
    default store; the experiment is ``<experiment_name or bundle_name>-inference``. When
    ``params`` name the manifest (``data.manifest``) and split (``eval.split``, default
    ``test``), those rows are logged as a dataset input with context ``testing``."""
    import mlflow

    from unet_med.tracking.datasets import SPLIT_CONTEXTS, log_dataset_inputs, manifest_dataset

    training = read_run_record(output_dir)
    if tracking_uri is None and training is not None:
        uri = training.tracking_uri
    else:
        uri = resolve_tracking_uri(tracking_uri, output_dir)
    check_tracking_uri(uri)
    tags = bundle_tags(bundle_name, bundle_version, preset)
    tags[RUN_KIND_TAG] = "evaluation"
    if training is not None:
        tags[TRAINING_RUN_TAG] = training.run_id
    name = run_name_for(bundle_name, f"{preset}-eval")
    experiment = inference_experiment_name(
        experiment_name or _training_experiment_name(uri, training) or bundle_name
    )
    params = dict(params or {})
    manifest = params.get("data.manifest")
    split = str(params.get("eval.split") or "test")
    with one_shot_run(uri, experiment_name=experiment, run_name=name, tags=tags) as run_id:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if v == v}, step=0)  # NaN: not logged
        mlflow.log_params({k: param_value(v) for k, v in params.items()})
        mlflow.log_artifact(str(csv_path), "evaluation")
        if manifest and split in SPLIT_CONTEXTS:
            dataset = manifest_dataset(manifest, split)
            log_dataset_inputs(mlflow.MlflowClient(uri), run_id, {SPLIT_CONTEXTS[split]: dataset})
    return run_id


# -- batch inference ----------------------------------------------------------------------------
def training_run_for_checkpoint(checkpoint: str | os.PathLike) -> TrainingRunRecord | None:
    """The training run recorded next to ``checkpoint`` (``<output_dir>/models/model.pt`` ->
    ``<output_dir>/mlflow_run.json``; the checkpoint's own folder is tried too), or None.

    Raises:
        TrackingStoreError: the record exists but is not the JSON a training writes.
    """
    checkpoint = Path(checkpoint)
    for folder in (checkpoint.parent.parent, checkpoint.parent):
        record = read_run_record(folder)
        if record is not None:
            return record
    return None


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (identifies the checkpoint an inference used)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class InferenceTracking:
    """Where an inference run will be logged, decided (and the store checked) before any scan is
    segmented, so an unreachable server stops the command before it does work."""

    tracking_uri: str
    experiment_name: str | None
    training: TrainingRunRecord | None


def plan_inference_tracking(
    checkpoint: str | os.PathLike,
    *,
    tracking_uri: str | None = None,
    experiment_name: str | None = None,
    timeout_s: float = 5.0,
) -> InferenceTracking:
    """Decide the store of an inference run: ``tracking_uri`` when given, else the training run's
    store recorded next to ``checkpoint``; check that it answers.

    Raises:
        TrackingStoreError: no store known (no ``tracking_uri`` and no training record), or the
            store does not answer within ``timeout_s`` seconds.
    """
    training = training_run_for_checkpoint(checkpoint)
    uri = tracking_uri or (training.tracking_uri if training else None)
    if uri is None:
        raise TrackingStoreError(
            f"no tracking store for this inference: no training run record ({RUN_FILE}) next to the "
            f"checkpoint {checkpoint}; pass --tracking-uri"
        )
    check_tracking_store(uri, timeout_s=timeout_s, must_exist=False)
    return InferenceTracking(tracking_uri=uri, experiment_name=experiment_name, training=training)


def log_inference_run(
    plan: InferenceTracking,
    *,
    bundle_name: str,
    bundle_version: str,
    checkpoint: str | os.PathLike,
    report_path: str | os.PathLike,
    status_counts: Mapping[str, int],
    seconds: float,
    params: Mapping[str, Any] | None = None,
    input_dir: str | os.PathLike | None = None,
) -> str:
    """Log one finished batch inference as an MLflow run (``<bundle>-infer-<time>``); returns its
    run id.

    The run goes to ``plan.experiment_name`` when given, else to ``<training experiment>-inference``
    when the training is known and shares the store, else to ``<bundle_name>-inference``. With
    ``input_dir`` (the folder of scans) that folder is logged as a dataset input (context
    ``inference``; profile: files and scans ok/failed/skipped). Params: ``infer.checkpoint``,
    ``infer.checkpoint_sha256`` and ``params`` (flat keys, values as ``str``); metrics:
    ``scans_ok``, ``scans_failed``, ``scans_skipped``, ``infer_seconds`` (wall time of the batch,
    s); tags: ``bundle.name``, ``bundle.version``, ``git.commit``, ``unet_med.run_kind=inference``
    and :data:`TRAINING_RUN_TAG`; artifact: ``inference/<report file>``.
    """
    import mlflow

    from unet_med.tracking.datasets import folder_dataset, log_dataset_inputs

    training = plan.training
    experiment = plan.experiment_name or inference_experiment_name(
        _training_experiment_name(plan.tracking_uri, training) or bundle_name
    )
    tags = bundle_tags(bundle_name, bundle_version)
    tags[RUN_KIND_TAG] = "inference"
    if training is not None:
        tags[TRAINING_RUN_TAG] = training.run_id
    all_params = {
        "infer.checkpoint": str(Path(checkpoint).resolve()),
        "infer.checkpoint_sha256": file_sha256(checkpoint),
    }
    all_params.update({k: str(v) for k, v in (params or {}).items()})
    metrics = {f"scans_{s}": float(status_counts.get(s, 0)) for s in ("ok", "failed", "skipped")}
    metrics["infer_seconds"] = float(seconds)
    with one_shot_run(
        plan.tracking_uri,
        experiment_name=experiment,
        run_name=run_name_for(bundle_name, "infer"),
        tags=tags,
    ) as run_id:
        mlflow.log_metrics(metrics, step=0)
        mlflow.log_params(all_params)
        mlflow.log_artifact(str(report_path), "inference")
        if input_dir is not None:
            scans = {f"scans_{s}": int(status_counts.get(s, 0)) for s in ("ok", "failed", "skipped")}
            dataset = folder_dataset(input_dir, profile=scans)
            log_dataset_inputs(mlflow.MlflowClient(plan.tracking_uri), run_id, {"inference": dataset})
    return run_id
