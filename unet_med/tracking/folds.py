"""Cross-validation in MLflow: the trainings of the folds of one split are child runs of one parent
run, which carries the per-fold and mean best validation Dice.

Folds are separate trainings (``--fold K --num_folds N``, often on different machines or at
different times), so no process owns the cross-validation as a whole. The parent is therefore
found, or created by the first fold that needs it, from a stable key: the bundle, the manifest's
content hash, ``num_folds`` and ``fold_seed`` (:func:`cv_group_key`); the split of a manifest into
folds is a function of exactly these (:func:`unet_med.data.manifest.fold_assignment`). Every fold
run names its parent with MLflow's own tag ``mlflow.parentRunId``, so the UI's runs table nests the
folds under the parent row.

Each fold that ends (finished or failed) recomputes the parent's summary from the fold runs in the
store (:func:`update_cv_summary`): ``fold<K>_best_val_mean_dice`` per fold, ``cv_mean_best_val_mean_dice``
and ``cv_std_best_val_mean_dice`` over the folds that have one, ``cv_folds_done``; the parent is
FINISHED once every fold has finished, RUNNING before. Recomputing from the store rather than
adding to a running total makes the update idempotent and safe when two folds end together.

Two folds starting at the same moment on a server may both create a parent (a server offers no
lock; on an SQLite store the creation is serialised by the store's lock). Every fold then keeps the
oldest parent of the key (ties by run id) and deletes its own if it lost; a fold that looked
before the other parent existed moves itself to the surviving parent when it ends
(:func:`canonical_cv_parent`), before the summary is computed, so the folds converge on one parent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping

from unet_med.tracking.run_record import RUN_KIND_TAG
from unet_med.tracking.store import store_lock
from unet_med.tracking.ui import NOTE_TAG

__all__ = [
    "CV_GROUP_TAG",
    "CV_KIND",
    "FOLD_TAG",
    "PARENT_TAG",
    "cv_group_key",
    "find_or_create_cv_parent",
    "canonical_cv_parent",
    "update_cv_summary",
]

logger = logging.getLogger(__name__)

#: Tag holding the cross-validation key on the parent and on every fold run.
CV_GROUP_TAG = "unet_med.cv_group"
#: ``unet_med.run_kind`` of a parent run (fold runs are ``training`` runs, without the tag).
CV_KIND = "cross_validation"
#: Tag of a fold run: its fold index.
FOLD_TAG = "unet_med.fold"
#: MLflow's tag naming a run's parent (the UI nests children under it).
PARENT_TAG = "mlflow.parentRunId"
_METRIC = "best_val_mean_dice"


def cv_group_key(bundle_name: str, manifest_sha256: str, num_folds: int, fold_seed: int) -> str:
    """The stable key of one cross-validation: hex SHA-256 (first 16 digits) of the bundle name,
    the manifest's SHA-256, ``num_folds`` and ``fold_seed``."""
    text = json.dumps([bundle_name, manifest_sha256, int(num_folds), int(fold_seed)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _parents(client, experiment_id: str, key: str) -> list:
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{CV_GROUP_TAG}` = '{key}' AND tags.`{RUN_KIND_TAG}` = '{CV_KIND}'",
        max_results=50,
    )
    return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))


def find_or_create_cv_parent(
    client,
    tracking_uri: str,
    experiment_id: str,
    *,
    key: str,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, str],
) -> str:
    """The id of the parent run of cross-validation ``key`` in ``experiment_id``, created with
    ``run_name``, ``tags`` and ``params`` when there is none (status RUNNING until every fold
    has finished). See the module docstring for concurrent creation."""
    from mlflow.entities import Param

    with store_lock(tracking_uri):
        found = _parents(client, experiment_id, key)
        if found:
            return found[0].info.run_id
        all_tags = {**dict(tags), CV_GROUP_TAG: key, RUN_KIND_TAG: CV_KIND}
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        mine = run.info.run_id
        client.log_batch(mine, params=[Param(k, str(v)) for k, v in params.items()], tags=[])
        winner = _parents(client, experiment_id, key)[0].info.run_id
    if winner != mine:  # another fold created one at the same time: use the oldest
        client.delete_run(mine)
    return winner


def canonical_cv_parent(client, experiment_id: str, key: str) -> str | None:
    """The id of the surviving parent run of cross-validation ``key`` (the oldest not deleted,
    ties by run id), or None when there is none."""
    found = _parents(client, experiment_id, key)
    return found[0].info.run_id if found else None


def update_cv_summary(client, parent_run_id: str, num_folds: int) -> dict[str, float]:
    """Recompute the parent's summary from its fold runs and log it (see the module docstring);
    returns the metrics logged. For a fold run more than once (a rerun), the run with the higher
    best Dice counts."""
    import time

    from mlflow.entities import Metric, RunTag

    parent = client.get_run(parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
        max_results=1000,
    )
    best: dict[int, float] = {}
    finished: set[int] = set()
    for child in children:
        fold_text = child.data.tags.get(FOLD_TAG)
        if fold_text is None:
            continue
        fold = int(fold_text)
        if child.info.status == "FINISHED":
            finished.add(fold)
        value = child.data.metrics.get(_METRIC)
        if value is not None and (fold not in best or value > best[fold]):
            best[fold] = float(value)
    metrics: dict[str, float] = {f"fold{k}_{_METRIC}": v for k, v in sorted(best.items())}
    if best:
        values = list(best.values())
        mean = sum(values) / len(values)
        metrics[f"cv_mean_{_METRIC}"] = mean
        metrics[f"cv_std_{_METRIC}"] = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    metrics["cv_folds_done"] = float(len(finished))
    stamp = int(time.time() * 1000)
    step = len(finished)
    lines = [f"Cross-validation, {len(finished)} of {num_folds} folds finished."]
    lines += [f"- fold {k}: best validation mean Dice {v:.4f}" for k, v in sorted(best.items())]
    if best:
        lines.append(
            f"- mean over {len(best)} fold(s): {metrics[f'cv_mean_{_METRIC}']:.4f} "
            f"(std {metrics[f'cv_std_{_METRIC}']:.4f})"
        )
    client.log_batch(
        parent_run_id,
        metrics=[Metric(k, v, stamp, step) for k, v in metrics.items()],
        tags=[
            RunTag(NOTE_TAG, "\n".join(lines)),
            RunTag("unet_med.cv_folds_done", f"{len(finished)}/{num_folds}"),
        ],
    )
    complete = len(finished) >= num_folds
    status = parent.info.status
    if complete and status != "FINISHED":
        client.set_terminated(parent_run_id, status="FINISHED")
    elif not complete and status != "RUNNING":
        client.update_run(parent_run_id, status="RUNNING")
    logger.info("cross-validation run %s: %d of %d folds finished", parent_run_id, len(finished), num_folds)
    return metrics
