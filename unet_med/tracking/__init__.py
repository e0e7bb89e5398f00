"""MLflow tracking of the project's runs, one module per concern.

| module | what it owns |
| --- | --- |
| :mod:`~unet_med.tracking.store` | tracking URIs (one policy), store checks, the creation lock, experiments |
| :mod:`~unet_med.tracking.ui` | what MLflow's UI shows: experiment kind, run descriptions, runs-table URLs |
| :mod:`~unet_med.tracking.datasets` | manifests and scan folders as MLflow dataset inputs |
| :mod:`~unet_med.tracking.folds` | cross-validation: fold runs as children of a parent holding the summary |
| :mod:`~unet_med.tracking.run_record` | ``mlflow_run.json``, run names, shared tags, params as text |
| :mod:`~unet_med.tracking.tracker` | :class:`MLflowTracker`, the Ignite handler of a training run |
| :mod:`~unet_med.tracking.linked_runs` | evaluation and batch-inference runs linked to a training |
| :mod:`~unet_med.tracking.models` | best model as MLflow model, ``--register_model``, ``infer --model`` |
| :mod:`~unet_med.tracking.comparison` | ``unet-med runs compare``: runs table and validation curves |
| :mod:`~unet_med.tracking.server` | ``unet-med mlflow-server``: an ``mlflow server`` child process |

Every training run is tracked without the user asking: by default in ``$MLFLOW_TRACKING_URI``,
else in one SQLite store in the working directory (``sqlite:///<cwd>/mlflow.db``, artifacts under
``<cwd>/mlartifacts``) shared by all output folders, or at any ``--tracking_uri``.

The names below are what bundle configs and commands use (``unet_med.tracking.MLflowTracker``,
``unet_med.tracking.resolve_tracking_uri(@tracking_uri, @output_dir)``, ...). They are loaded on
first use (PEP 562 module ``__getattr__``) so that ``import unet_med.tracking`` stays cheap: the
console command imports the server module to build its ``--help`` and must not pay for torch,
pandas or mlflow; a bundle pays only for what it uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> submodule holding it
_EXPORTS: dict[str, str] = {
    "SQLITE_STORE_NAME": "store",
    "TrackingStoreError": "store",
    "default_tracking_uri": "store",
    "sqlite_store_uri": "store",
    "runs_table_url": "ui",
    "open_ui_hint": "ui",
    "inference_experiment_name": "linked_runs",
    "resolve_tracking_uri": "store",
    "existing_store_uri": "store",
    "check_tracking_store": "store",
    "check_tracking_uri": "store",
    "artifact_location_for": "store",
    "RUN_FILE": "run_record",
    "RUN_KIND_TAG": "run_record",
    "TRAINING_RUN_TAG": "run_record",
    "TrainingRunRecord": "run_record",
    "read_run_record": "run_record",
    "git_commit": "run_record",
    "run_name_for": "run_record",
    "MLflowTracker": "tracker",
    "CONFIG_ARTIFACT": "tracker",
    "one_shot_run": "linked_runs",
    "log_evaluation": "linked_runs",
    "training_run_for_checkpoint": "linked_runs",
    "file_sha256": "linked_runs",
    "InferenceTracking": "linked_runs",
    "plan_inference_tracking": "linked_runs",
    "log_inference_run": "linked_runs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ loads these
    from unet_med.tracking.linked_runs import (  # noqa: F401
        InferenceTracking,
        file_sha256,
        inference_experiment_name,
        log_evaluation,
        log_inference_run,
        one_shot_run,
        plan_inference_tracking,
        training_run_for_checkpoint,
    )
    from unet_med.tracking.run_record import (  # noqa: F401
        RUN_FILE,
        RUN_KIND_TAG,
        TRAINING_RUN_TAG,
        TrainingRunRecord,
        git_commit,
        read_run_record,
        run_name_for,
    )
    from unet_med.tracking.store import (  # noqa: F401
        SQLITE_STORE_NAME,
        TrackingStoreError,
        artifact_location_for,
        check_tracking_store,
        check_tracking_uri,
        default_tracking_uri,
        existing_store_uri,
        resolve_tracking_uri,
        sqlite_store_uri,
    )
    from unet_med.tracking.tracker import CONFIG_ARTIFACT, MLflowTracker  # noqa: F401
    from unet_med.tracking.ui import open_ui_hint, runs_table_url  # noqa: F401
