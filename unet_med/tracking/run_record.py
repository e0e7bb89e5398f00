"""What every MLflow run of the project says about itself: the training's run record file, the
run name, the tags shared by training, evaluation and inference runs, and params as text.

A training writes ``<output_dir>/mlflow_run.json`` (:data:`RUN_FILE`: its store URI, experiment
and run id). A resumed training reads it to continue the same run; an evaluation or batch
inference reads it to link its own run to the training (tag :data:`TRAINING_RUN_TAG`). One
writer (:func:`write_run_record`) and one reader (:func:`read_run_record`) keep that format.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet_med.atomic_files import atomic_output
from unet_med.tracking.store import TrackingStoreError

__all__ = [
    "RUN_FILE",
    "RUN_KIND_TAG",
    "TRAINING_RUN_TAG",
    "TrainingRunRecord",
    "read_run_record",
    "write_run_record",
    "git_commit",
    "run_name_for",
    "bundle_tags",
    "jsonable",
    "param_value",
]

#: File in a training's output folder that names its MLflow run, so a resumed training continues
#: the same run and evaluation/inference runs link to it.
RUN_FILE = "mlflow_run.json"
#: Tag telling evaluation and inference runs from training runs (which do not carry it).
RUN_KIND_TAG = "unet_med.run_kind"
#: Tag naming the training run whose checkpoint an evaluation or inference run used.
TRAINING_RUN_TAG = "unet_med.training_run_id"
_PARAM_MAX = 6000  # MLflow's limit on a param value's length (characters)


@dataclass(frozen=True)
class TrainingRunRecord:
    """Where the training of an output folder was tracked (the content of :data:`RUN_FILE`)."""

    tracking_uri: str
    experiment_id: str | None
    run_id: str
    path: Path


def read_run_record(folder: str | os.PathLike) -> TrainingRunRecord | None:
    """The training run recorded in ``<folder>/mlflow_run.json``, or None when there is none.

    Raises:
        TrackingStoreError: the file exists but is not the JSON a training writes.
    """
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
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


def write_run_record(
    folder: str | os.PathLike, *, tracking_uri: str, experiment_id: str, run_id: str
) -> Path:
    """Write ``<folder>/mlflow_run.json`` atomically; returns its path."""
    path = Path(folder) / RUN_FILE
    record = {"run_id": run_id, "experiment_id": experiment_id, "tracking_uri": tracking_uri}
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(record, indent=2))
    return path


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The current git commit of the checkout holding ``path`` (default: this package), or None."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_name_for(bundle_name: str, preset: str, when: float | None = None) -> str:
    """``<bundle>-<preset>-<YYYYmmdd-HHMMSS>`` (local time; ``when`` in seconds since the epoch,
    default now)."""
    return f"{bundle_name}-{preset}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(when))}"


def bundle_tags(bundle_name: str, bundle_version: str, preset: str | None = None) -> dict[str, str]:
    """The tags every run of a bundle carries: ``bundle.name``, ``bundle.version``,
    ``net.preset`` (when given) and ``git.commit`` (``"unknown"`` outside a git checkout)."""
    tags = {"bundle.name": bundle_name, "bundle.version": str(bundle_version)}
    if preset is not None:
        tags["net.preset"] = preset
    tags["git.commit"] = git_commit() or "unknown"
    return tags


def jsonable(value: Any) -> Any:
    """``value`` with mappings and sequences turned into JSON types, one-element tensors into
    numbers and anything else into its ``str``."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    import torch  # here, not at import: the run record is read by commands that need no torch

    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def param_value(value: Any) -> str:
    """A param as MLflow stores it: strings as they are, anything else as JSON (sequences as
    lists), cut to MLflow's 6000 characters."""
    text = value if isinstance(value, str) else json.dumps(jsonable(value))
    return text[:_PARAM_MAX]
