"""What MLflow's web UI shows of the project's runs: the experiment kind that makes it open on the
runs table, each run's description, and the URL (or command) every "open the UI" hint prints.

MLflow 3's UI decides per experiment whether to show the GenAI view (traces, sessions, prompts)
or the model-training runs table. Without the experiment tag ``mlflow.experimentKind`` it guesses,
and on an experiment with no traces it lands on an empty GenAI page; with the tag set to
``custom_model_development`` it opens the runs table. The query ``?workflowType=machine_learning``
selects the same view in a URL, so the printed links land on the runs table even on stores whose
experiments predate the tag. A run's description is MLflow's tag ``mlflow.note.content``
(markdown, shown on the run page and as the runs table's "Description").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = [
    "EXPERIMENT_KIND_TAG",
    "MODEL_TRAINING_KIND",
    "NOTE_TAG",
    "DEFAULT_UI_PORT",
    "experiment_tags",
    "mark_model_training",
    "runs_table_url",
    "open_ui_hint",
    "run_description",
]

logger = logging.getLogger(__name__)

#: Experiment tag MLflow's UI reads to choose between the GenAI and the model-training views.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
#: Its value for experiments of trained models (MLflow's ``ExperimentKind.CUSTOM_MODEL_DEVELOPMENT``).
MODEL_TRAINING_KIND = "custom_model_development"
#: Run tag holding the run's description (markdown).
NOTE_TAG = "mlflow.note.content"
#: Port ``mlflow ui`` and ``mlflow server`` listen on unless told otherwise.
DEFAULT_UI_PORT = 5000


def experiment_tags() -> dict[str, str]:
    """Tags of every experiment the project creates: the model-training kind."""
    return {EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}


def mark_model_training(client, experiment) -> None:
    """Tag an existing ``experiment`` (an ``mlflow.entities.Experiment``) as a model-training
    experiment unless it already has a kind (a user's choice wins). Failures (a read-only server
    account) are logged, not raised: the tag is a convenience of the UI."""
    if EXPERIMENT_KIND_TAG in (experiment.tags or {}):
        return
    try:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    except Exception as error:  # MlflowException or HTTP errors alike
        logger.warning("could not tag experiment %s as model training (%s)", experiment.name, error)


def runs_table_url(ui_url: str, experiment_id: str) -> str:
    """The URL of the runs table of ``experiment_id`` in the MLflow UI at ``ui_url``
    (``http://127.0.0.1:5000/#/experiments/1/runs?workflowType=machine_learning``)."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def open_ui_hint(tracking_uri: str, experiment_id: str, *, port: int = DEFAULT_UI_PORT) -> str:
    """One line telling a user how to see ``experiment_id``'s runs table.

    For a tracking server the server is the UI: its runs-table URL. For any other store (SQLite,
    a database) the UI must be started first: the ``mlflow ui`` command for the store, then the
    URL it will serve on 127.0.0.1:``port``.
    """
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {runs_table_url(tracking_uri, experiment_id)}"
    url = runs_table_url(f"http://127.0.0.1:{port}", experiment_id)
    return f"mlflow ui --backend-store-uri {tracking_uri} --port {port}  then open {url}"


def run_description(
    *,
    bundle: str,
    preset: str,
    manifest: str | os.PathLike | None = None,
    cases: Mapping[str, int] | None = None,
    fold: int | None = None,
    num_folds: int | None = None,
    best_dice: float | None = None,
    best_epoch: int | None = None,
    status: str | None = None,
) -> str:
    """A training run's description (markdown) for ``mlflow.note.content``: bundle, preset,
    data (manifest file and the number of cases per context), fold, and the best validation mean
    Dice with its epoch once known.

    Example: ``**unet2d_paper**, preset `paper`; data `demo2d/manifest.csv` (train 4, val 1);
    best validation mean Dice 0.7312 (epoch 3)``.
    """
    parts = [f"**{bundle}**, preset `{preset}`"]
    if manifest is not None:
        path = Path(manifest)
        where = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
        counts = ", ".join(f"{name} {n}" for name, n in (cases or {}).items())
        parts.append(f"data `{where}`" + (f" ({counts})" if counts else ""))
    if fold is not None:
        parts.append(f"fold {fold} of {num_folds}" if num_folds else f"fold {fold}")
    if best_dice is not None and best_dice >= 0:
        epoch = f" (epoch {best_epoch})" if best_epoch is not None and best_epoch >= 0 else ""
        parts.append(f"best validation mean Dice {best_dice:.4f}{epoch}")
    elif status is not None:
        parts.append(status)
    return "; ".join(parts)
