"""MLflow runs for batch inference (``unet-med infer --track``), linked to the training run.

A training writes ``<output_dir>/mlflow_run.json`` (its store URI, experiment and run id) next to
``<output_dir>/models/model.pt``. An inference run that used that checkpoint is logged to the same
store and experiment with the tag ``unet_med.training_run_id``, so the MLflow UI leads from a
model's validation curve to the scans it was applied to: the run holds the batch's figures as
metrics and ``report.csv`` (scan ids and relative sources, never patient tags) as an artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet_med.tracking_store import (
    TrackingStoreError,
    check_tracking_store,
    get_or_create_experiment,
    prepare_store,
)

#: Tag naming the training run whose checkpoint an evaluation or inference run used.
TRAINING_RUN_TAG = "unet_med.training_run_id"
#: The training's run record, written by :class:`unet_med.tracking.MLflowTracker` in its output folder.
RUN_RECORD = "mlflow_run.json"


@dataclass(frozen=True)
class TrainingRunRecord:
    """Where the training that wrote a checkpoint was tracked."""

    tracking_uri: str
    experiment_id: str | None
    run_id: str
    path: Path


def training_run_for_checkpoint(checkpoint: str | os.PathLike) -> TrainingRunRecord | None:
    """The training run recorded next to ``checkpoint`` (``<output_dir>/models/model.pt`` ->
    ``<output_dir>/mlflow_run.json``; the checkpoint's own folder is tried too), or None.

    Raises:
        TrackingStoreError: the record exists but is not the JSON a training writes.
    """
    checkpoint = Path(checkpoint)
    for folder in (checkpoint.parent.parent, checkpoint.parent):
        path = folder / RUN_RECORD
        if not path.is_file():
            continue
        try:
            record = json.loads(path.read_text())
            return TrainingRunRecord(
                tracking_uri=str(record["tracking_uri"]),
                experiment_id=record.get("experiment_id"),
                run_id=str(record["run_id"]),
                path=path,
            )
        except (ValueError, KeyError, TypeError) as error:
            raise TrackingStoreError(
                f"{path}: not a training run record (expected JSON with 'tracking_uri' and 'run_id'; {error})"
            ) from error
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
            f"no tracking store for this inference: no training run record ({RUN_RECORD}) next to the "
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
) -> str:
    """Log one finished batch inference as an MLflow run; returns its run id.

    The run goes to the training run's experiment when the training is known and it shares the
    store, else to ``plan.experiment_name`` or ``bundle_name``. Params: ``infer.checkpoint``,
    ``infer.checkpoint_sha256`` and ``params`` (flat keys); metrics: ``scans_ok``,
    ``scans_failed``, ``scans_skipped``, ``infer_seconds`` (wall time of the batch, s); tags:
    ``bundle.name``, ``bundle.version``, ``unet_med.run_kind=inference`` and
    :data:`TRAINING_RUN_TAG`; artifact: ``inference/<report file>``.
    """
    from mlflow.entities import Metric, Param, RunTag

    from unet_med.tracking import git_commit

    client = prepare_store(plan.tracking_uri)
    training = plan.training
    same_store = training is not None and training.tracking_uri == plan.tracking_uri
    if plan.experiment_name is None and same_store and training.experiment_id is not None:
        experiment_id = training.experiment_id
    else:
        experiment_id = get_or_create_experiment(client, plan.experiment_name or bundle_name)
    tags = {
        "bundle.name": bundle_name,
        "bundle.version": str(bundle_version),
        "git.commit": git_commit() or "unknown",
        "unet_med.run_kind": "inference",
    }
    if training is not None:
        tags[TRAINING_RUN_TAG] = training.run_id
    run_name = f"{bundle_name}-infer-{time.strftime('%Y%m%d-%H%M%S')}"
    run = client.create_run(experiment_id, run_name=run_name)
    run_id = run.info.run_id
    stamp = int(time.time() * 1000)
    all_params = {
        "infer.checkpoint": str(Path(checkpoint).resolve()),
        "infer.checkpoint_sha256": file_sha256(checkpoint),
    }
    all_params.update({k: str(v) for k, v in (params or {}).items()})
    metrics = {f"scans_{status}": status_counts.get(status, 0) for status in ("ok", "failed", "skipped")}
    metrics["infer_seconds"] = seconds
    try:
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()],
            params=[Param(k, v) for k, v in all_params.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        client.log_artifact(run_id, str(report_path), "inference")
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id
