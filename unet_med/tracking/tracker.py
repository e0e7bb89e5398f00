"""The Ignite handler that records one training in one MLflow run.

Names are flat and stable so runs compare across bundles: params ``net.preset``, ``optim.lr``,
``data.manifest_sha256``, ...; metrics ``train_loss`` (step = iteration), ``val_mean_dice`` and
``val_dice_<class>`` (step = epoch), ``best_val_mean_dice``, ``best_epoch``, ``epoch_time_s``,
``samples_per_s``, ``peak_memory_mb``; tags ``bundle.name``, ``bundle.version``, ``net.preset``,
``git.commit``, ``host.device``, the description ``mlflow.note.content``, MLflow's
``mlflow.source.name``/``mlflow.source.git.commit`` (the runs table's Source); artifacts
``config/resolved_config.json`` (the executed config), ``models/``, ``plots/``, ``overlays/`` (logged
by the handlers that write them); the manifest's training and validation rows as dataset inputs
(:mod:`unet_med.tracking.datasets`); MLflow's system metrics (``system/cpu_utilization_percentage``,
``system/system_memory_usage_megabytes``, ``system/gpu_*`` with ``nvidia-ml-py`` installed, ...).
A fold of a cross-validation is a child run of the cross-validation's parent run
(:mod:`unet_med.tracking.folds`).

The executed config reaches the tracker by file, as in MONAI's own bundle tracking
(``monai/bundle/workflows.py``, ``patch_bundle_tracking``): the bundle workflow exports the
config it runs (command-line overrides included) and passes its path as ``config_file``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from unet_med.distributed import is_main_process
from unet_med.tracking.run_record import (
    bundle_tags,
    jsonable,
    param_value,
    read_run_record,
    run_name_for,
    write_run_record,
)
from unet_med.tracking.store import (
    artifact_location_for,
    check_tracking_uri,
    get_or_create_experiment,
    prepare_store,
    resolve_tracking_uri,
)
from unet_med.tracking.ui import NOTE_TAG, open_ui_hint, run_description

__all__ = ["MLflowTracker", "CONFIG_ARTIFACT"]

logger = logging.getLogger(__name__)

#: Artifact holding the executed config of a training.
CONFIG_ARTIFACT = "config/resolved_config.json"
_BATCH_LIMIT = 1000  # MLflow's limit on metrics per log_batch call
#: Seconds between two samples of MLflow's system metrics (MLflow's default; its environment
#: variable ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` overrides it).
SYSTEM_METRICS_INTERVAL_S = 10.0


def _system_metrics_wanted(interval_s: float | None) -> bool:
    """False when ``interval_s`` is None/0 or ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING`` is set false."""
    flag = os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "").strip().lower()
    return bool(interval_s) and flag not in ("false", "0", "no")


def _peak_memory_mb(device: torch.device | None) -> float:
    """Peak memory of this process in MiB: allocated CUDA memory on a GPU, else the resident set."""
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(device) / 2**20
    # ru_maxrss: kibibytes on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MLflowTracker:
    """Ignite handler that records one training in one MLflow run.

    Attach it to the trainer (``train_handlers``) and to the evaluator (``val_handlers``): the
    trainer side starts (or, when resuming, re-opens) the run, logs params and tags, the
    per-iteration ``train_loss`` and per-epoch timing; the evaluator side logs the validation
    Dice per epoch. Artifacts are logged with :meth:`log_artifact` by the handlers that write
    them (checkpoints, pictures), and the executed config as ``config/resolved_config.json`` at
    the start.

    Written instead of MONAI's ``MLFlowHandler`` because the bundle contract needs one run shared
    by trainer and evaluator, continued on resume, per-class Dice under class names, flat stable
    param names, tags, and artifacts in named folders. For the same reasons it writes through an
    ``MlflowClient`` and a run id rather than ``mlflow.start_run``: the fluent API's active run is
    process-wide state that one ``with`` block opens and closes, while this run is written from
    two engines' events, re-opened on resume, and its per-iteration loss is queued and written in
    batches (``log_batch``) instead of one request per iteration. Only the main process of a
    distributed run logs (:func:`unet_med.distributed.is_main_process`).

    Args:
        output_dir: the run's output folder (default store, run file, resolved config).
        bundle_name: ``bundle.name`` tag, default experiment name and run-name prefix.
        bundle_version: ``bundle.version`` tag.
        preset: the network preset (``net.preset`` tag, run name).
        params: flat params (``net.base_width``, ``optim.lr``, ...); values are logged as text
            (sequences as JSON).
        tracking_uri: store URI; None means the default store (``$MLFLOW_TRACKING_URI``, else
            ``./mlflow.db`` in the working directory, shared by all output folders), or, when
            resuming, the store of the run being continued.
        experiment_name: None means ``bundle_name``.
        class_names: names of the classes, background first; ``val_dice_<name>`` per class
            (the background class excluded when the per-class metric leaves it out).
        resume: continue the run recorded in ``<output_dir>/mlflow_run.json`` when it exists.
        loss_key: key of the loss in the trainer's output.
        mean_dice_metric / per_class_dice_metric: names of the evaluator metrics that hold the
            mean Dice (a float) and the per-class Dice (a tensor, one value per class).
        device: the training device (``host.device`` tag, peak memory).
        flush_every: iterations between batched writes of ``train_loss``.
        config_file: path of the executed config that the bundle workflow exports (JSON, the
            config with its command-line overrides); its content is logged as
            ``config/resolved_config.json`` when the run starts. None (and no ``config``) logs
            no config artifact.
        config: a config mapping to log instead of ``config_file`` (for library use and tests).
        resolved: resolved values of the top-level hyperparameters, added to the logged config
            under ``"_resolved_"``.
        manifest: the training manifest; its ``train`` and ``val`` rows (of ``fold`` when given)
            are logged as dataset inputs (contexts ``training``/``validation``) and named in the
            run's description. None logs no dataset.
        fold / num_folds / fold_seed: the cross-validation fold this training is; with a
            ``fold`` the run becomes a child of the cross-validation's parent run
            (:mod:`unet_med.tracking.folds`), which needs ``manifest`` for its key.
        system_metrics_interval_s: seconds between samples of MLflow's system metrics (CPU, memory,
            disk, network; GPU when ``nvidia-ml-py`` is installed), logged as ``system/*`` while the
            run is open; None or 0 (or ``MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING=false``) turns them off.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        *,
        bundle_name: str,
        bundle_version: str = "0.0.0",
        preset: str = "unknown",
        params: Mapping[str, Any] | None = None,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        class_names: Sequence[str] = (),
        resume: bool = False,
        loss_key: str = "loss",
        mean_dice_metric: str = "val_mean_dice",
        per_class_dice_metric: str = "val_dice_per_class",
        device: str | torch.device | None = None,
        flush_every: int = 50,
        config_file: str | os.PathLike | None = None,
        config: Mapping[str, Any] | None = None,
        resolved: Mapping[str, Any] | None = None,
        manifest: str | os.PathLike | None = None,
        fold: int | None = None,
        num_folds: int | None = None,
        fold_seed: int = 0,
        system_metrics_interval_s: float | None = SYSTEM_METRICS_INTERVAL_S,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.bundle_name = bundle_name
        self.bundle_version = str(bundle_version)
        self.preset = preset
        self.params = dict(params or {})
        self.tracking_uri = self._store_for(tracking_uri, output_dir, resume)
        self.experiment_name = experiment_name or bundle_name
        self.class_names = [str(c) for c in class_names]
        self.resume = bool(resume)
        self.loss_key = loss_key
        self.mean_dice_metric = mean_dice_metric
        self.per_class_dice_metric = per_class_dice_metric
        self.device = torch.device(device) if device is not None else None
        self.flush_every = max(1, int(flush_every))
        self.enabled = is_main_process()
        self.client = None
        self.run_id: str | None = None
        self._pending: list = []
        self._epoch_start = 0.0
        self._best: tuple[float, int] = (-1.0, -1)
        self.config_file = Path(config_file) if config_file is not None else None
        self.config = jsonable(dict(config)) if config is not None else None
        self.resolved = jsonable(dict(resolved)) if resolved is not None else None
        self.manifest = Path(manifest).resolve() if manifest is not None else None
        self.fold = int(fold) if fold is not None else None
        self.num_folds = int(num_folds) if num_folds is not None else None
        self.fold_seed = int(fold_seed or 0)
        if self.fold is not None and self.manifest is None:
            raise ValueError(
                f"MLflowTracker: fold {self.fold} given without a manifest; the cross-validation's "
                "parent run is found by the manifest's content hash (pass manifest=@manifest)"
            )
        self.system_metrics_interval_s = system_metrics_interval_s
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._cases: dict[str, int] = {}
        self._system_metrics = None
        if self.enabled:
            check_tracking_uri(self.tracking_uri)

    @staticmethod
    def _store_for(tracking_uri: str | None, output_dir: str | os.PathLike, resume: bool) -> str:
        """The store to write to: ``tracking_uri`` when given; when resuming without one, the store
        the output folder's run record names (the default store depends on the working folder, and
        a resumed training started from another folder must still continue its run); else the
        default store."""
        resolved = resolve_tracking_uri(tracking_uri, output_dir)
        if not resume or resolved != resolve_tracking_uri(None):  # nothing to continue, or a store given
            return resolved
        record = read_run_record(output_dir)
        return record.tracking_uri if record is not None else resolved

    # -- run life cycle -------------------------------------------------------------------------
    def attach(self, engine) -> None:
        """Attach to a trainer or (when ``engine`` is a MONAI ``Evaluator``) an evaluator."""
        from ignite.engine import Events
        from monai.engines import Evaluator

        if not self.enabled:
            return
        if isinstance(engine, Evaluator):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.log_validation)
            return
        engine.add_event_handler(Events.STARTED, self.start)
        engine.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.log_iteration)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.log_epoch)
        engine.add_event_handler(Events.COMPLETED, self.finish)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self.fail)

    def _previous_run_id(self) -> str | None:
        """The run to continue: the output folder's run record when resuming into the same store."""
        record = read_run_record(self.output_dir) if self.resume else None
        if record is None:
            return None
        if record.tracking_uri != self.tracking_uri:
            logger.warning("%s names another store (%s); new run", record.path, record.tracking_uri)
            return None
        return record.run_id

    def executed_config(self) -> dict[str, Any] | None:
        """The config to log: ``config``, else the content of ``config_file``, plus ``"_resolved_"``;
        None when there is none.

        Raises:
            FileNotFoundError / ValueError: ``config_file`` is missing or not JSON (named).
        """
        config = self.config
        if config is None and self.config_file is not None:
            try:
                config = jsonable(json.loads(self.config_file.read_text()))
            except FileNotFoundError as error:
                raise FileNotFoundError(
                    f"executed config {self.config_file} does not exist: the bundle workflow exports "
                    "it before the run starts and passes its path as the tracker's config_file"
                ) from error
            except ValueError as error:
                raise ValueError(f"executed config {self.config_file} is not JSON ({error})") from error
        if config is None and self.resolved is None:
            return None
        config = dict(config or {})
        if self.resolved is not None:
            config["_resolved_"] = self.resolved
        return config

    def start(self, engine=None) -> str | None:
        """Create (or re-open on resume) the run; log params, tags and the resolved config."""
        if not self.enabled or self.run_id is not None:
            return self.run_id
        from mlflow.entities import Param, RunTag

        config = self.executed_config()  # a wrong config_file fails before the run is created
        self.client = prepare_store(self.tracking_uri)
        experiment_id = get_or_create_experiment(
            self.client, self.experiment_name, artifact_location_for(self.tracking_uri)
        )
        previous = self._previous_run_id()
        tags = bundle_tags(self.bundle_name, self.bundle_version, self.preset)
        tags["host.device"] = str(self.device or "cpu")
        # the runs table's Source column: the command and the commit that ran
        tags["mlflow.source.type"] = "LOCAL"
        tags["mlflow.source.name"] = f"monai.bundle run training ({self.bundle_name})"
        if tags.get("git.commit", "unknown") != "unknown":
            tags["mlflow.source.git.commit"] = tags["git.commit"]
        if previous is not None:
            run = self.client.get_run(previous)
            self.run_id = run.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            resumed = int(run.data.tags.get("unet_med.resumed", "0")) + 1
            self.client.set_tag(self.run_id, "unet_med.resumed", str(resumed))
            logged = run.data.params
            self.parent_run_id = run.data.tags.get("mlflow.parentRunId")
            metric = run.data.metrics
            if "best_val_mean_dice" in metric:
                best_epoch = int(metric.get("best_epoch", -1))
                self._best = (metric["best_val_mean_dice"], best_epoch)
        else:
            if self.fold is not None:
                self.parent_run_id = self._cv_parent(experiment_id, tags)
                tags.update(self._fold_tags())
            run = self.client.create_run(
                experiment_id, run_name=run_name_for(self.bundle_name, self.preset), tags=tags
            )
            self.run_id = run.info.run_id
            logged = {}
        params = {k: param_value(v) for k, v in self.params.items() if k not in logged}
        if params:
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
        if previous is None:
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.experiment_id = experiment_id
        write_run_record(
            self.output_dir, tracking_uri=self.tracking_uri, experiment_id=experiment_id, run_id=self.run_id
        )
        if config is not None:
            self.log_dict(config, CONFIG_ARTIFACT)
        else:
            logger.debug("no config_file given: run %s gets no %s artifact", self.run_id, CONFIG_ARTIFACT)
        if self.manifest is not None:
            from unet_med.tracking.datasets import log_manifest_inputs

            self._cases = log_manifest_inputs(
                self.client, self.run_id, self.manifest,
                fold=self.fold, num_folds=self.num_folds, fold_seed=self.fold_seed,
            )
        self._describe()
        self._start_system_metrics(resume=previous is not None)
        logger.info(
            "MLflow run %s (%s) in %s; to see it: %s",
            self.run_id, "resumed" if previous else "new", self.tracking_uri, self.ui_hint(),
        )
        return self.run_id

    def ui_hint(self) -> str:
        """How to open this run's experiment on the runs table
        (:func:`unet_med.tracking.ui.open_ui_hint`)."""
        return open_ui_hint(self.tracking_uri, self.experiment_id or "0")

    def _describe(self, status: str | None = None) -> None:
        """Set the run's description (``mlflow.note.content``): bundle, preset, data, best Dice."""
        best, epoch = self._best
        note = run_description(
            bundle=self.bundle_name, preset=self.preset, manifest=self.manifest, cases=self._cases,
            fold=self.fold, num_folds=self.num_folds,
            best_dice=best if best >= 0 else None, best_epoch=epoch, status=status,
        )
        self.client.set_tag(self.run_id, NOTE_TAG, note)

    # -- system metrics -------------------------------------------------------------------------
    def _start_system_metrics(self, *, resume: bool) -> None:
        """Start MLflow's system-metrics sampler on this run (a daemon thread; it stops by itself
        when the run is no longer RUNNING). Written through MLflow's own
        ``SystemMetricsMonitor`` rather than ``mlflow.start_run(log_system_metrics=True)`` because
        this run is not the fluent API's active run (see the class docstring)."""
        if not _system_metrics_wanted(self.system_metrics_interval_s):
            return
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._system_metrics = SystemMetricsMonitor(
                self.run_id,
                sampling_interval=float(self.system_metrics_interval_s),
                resume_logging=resume,
                tracking_uri=self.tracking_uri,
            )
            self._system_metrics.start()
        except (ImportError, TypeError) as error:  # psutil missing, or an MLflow older than 2.16's API
            logger.warning("no system metrics for run %s (%s); pip install psutil", self.run_id, error)
            self._system_metrics = None

    def _stop_system_metrics(self) -> None:
        """Stop the sampler and write a last sample covering the interval it was in: MLflow's
        sampler drops that partial interval, so a run shorter than one interval (or the last
        minutes of a long one with a long interval) would otherwise have no system metrics."""
        monitor, self._system_metrics = self._system_metrics, None
        if monitor is None:
            return
        try:
            monitor.finish()  # joins the sampling thread and writes what it published
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
        except Exception as error:  # a sampler failing at the end must not fail the training
            logger.warning("system metrics of run %s not completed (%s)", self.run_id, error)

    # -- cross-validation -----------------------------------------------------------------------
    def _fold_tags(self) -> dict[str, str]:
        from unet_med.tracking.folds import CV_GROUP_TAG, FOLD_TAG, PARENT_TAG

        return {
            PARENT_TAG: self.parent_run_id,
            FOLD_TAG: str(self.fold),
            CV_GROUP_TAG: self._cv_key(),
        }

    def _cv_key(self) -> str:
        from unet_med.data.manifest import manifest_sha256
        from unet_med.tracking.folds import cv_group_key

        digest = manifest_sha256(self.manifest)
        return cv_group_key(self.bundle_name, digest, self.num_folds or 5, self.fold_seed)

    def _cv_parent(self, experiment_id: str, tags: Mapping[str, str]) -> str:
        """The cross-validation's parent run (found or created, :mod:`unet_med.tracking.folds`)."""
        from unet_med.data.manifest import manifest_sha256
        from unet_med.tracking.datasets import manifest_label
        from unet_med.tracking.folds import find_or_create_cv_parent

        num_folds = self.num_folds or 5
        key = self._cv_key()
        return find_or_create_cv_parent(
            self.client, self.tracking_uri, experiment_id, key=key,
            run_name=f"{self.bundle_name}-{self.preset}-cv{num_folds}-{key[:8]}",
            tags={k: v for k, v in tags.items() if k != "host.device"},
            params={
                "data.manifest": str(self.manifest),
                "data.manifest_label": manifest_label(self.manifest),
                "data.manifest_sha256": manifest_sha256(self.manifest),
                "train.num_folds": str(num_folds),
                "train.fold_seed": str(self.fold_seed),
                "net.preset": self.preset,
            },
        )

    def _update_cv_parent(self) -> None:
        if self.parent_run_id is None or self.fold is None:
            return
        from unet_med.tracking.folds import PARENT_TAG, canonical_cv_parent, update_cv_summary

        try:
            canonical = canonical_cv_parent(self.client, self.experiment_id, self._cv_key())
            if canonical is not None and canonical != self.parent_run_id:  # lost a creation race
                self.client.set_tag(self.run_id, PARENT_TAG, canonical)
                self.parent_run_id = canonical
            update_cv_summary(self.client, self.parent_run_id, self.num_folds or 5)
        except Exception as error:  # the fold's own run is complete; the summary is derived
            logger.warning("cross-validation summary of run %s not updated (%s)", self.parent_run_id, error)

    def finish(self, engine=None) -> None:
        """Flush pending metrics and mark the run FINISHED."""
        if self.client is None or self.run_id is None:
            return
        self.flush()
        self._stop_system_metrics()
        self._describe()
        self.client.set_terminated(self.run_id, status="FINISHED")
        self._update_cv_parent()
        history = self.client.get_metric_history(self.run_id, "val_mean_dice")
        if history:
            last = max(history, key=lambda m: (m.step, m.timestamp))
            logger.info(
                "validation mean Dice: final %.4f (epoch %d), best %.4f (epoch %d)",
                last.value, last.step, self._best[0], self._best[1],
            )
        logger.info(
            "MLflow run %s finished in %s; to see it: %s", self.run_id, self.tracking_uri, self.ui_hint()
        )

    def fail(self, engine=None, error: BaseException | None = None) -> None:
        """Flush and mark the run FAILED, then let the exception propagate."""
        if self.client is not None and self.run_id is not None:
            self.flush()
            self._stop_system_metrics()
            self._describe(status="failed")
            self.client.set_terminated(self.run_id, status="FAILED")
            self._update_cv_parent()
        if error is not None:
            raise error

    # -- metrics --------------------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Queue metrics at ``step``; written in batches."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self._pending.extend(Metric(k, float(v), stamp, int(step)) for k, v in metrics.items())
        if len(self._pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write queued metrics now."""
        if self.client is None or not self._pending:
            return
        for start in range(0, len(self._pending), _BATCH_LIMIT):
            self.client.log_batch(self.run_id, metrics=self._pending[start : start + _BATCH_LIMIT])
        self._pending = []

    def log_iteration(self, engine) -> None:
        output = engine.state.output
        loss = output.get(self.loss_key) if isinstance(output, Mapping) else output
        if isinstance(loss, (list, tuple)):  # decollated output: every item carries the loss
            loss = loss[0][self.loss_key] if isinstance(loss[0], Mapping) else loss[0]
        if loss is not None:
            loss = loss.detach().item() if isinstance(loss, torch.Tensor) else float(loss)
            self.log_metrics({"train_loss": loss}, engine.state.iteration)

    def _start_epoch(self, engine) -> None:
        self._epoch_start = time.perf_counter()

    def log_epoch(self, engine) -> None:
        seconds = time.perf_counter() - self._epoch_start
        samples = engine.state.epoch_length * (getattr(engine.data_loader, "batch_size", None) or 1)
        self.log_metrics(
            {
                "epoch_time_s": seconds,
                "samples_per_s": samples / max(seconds, 1e-9),
                "peak_memory_mb": _peak_memory_mb(self.device),
            },
            engine.state.epoch,
        )
        self.flush()

    def log_validation(self, evaluator) -> None:
        """Log ``val_mean_dice``, ``val_dice_<class>``, ``best_val_mean_dice``, ``best_epoch``."""
        epoch = int(evaluator.state.epoch)
        metrics = evaluator.state.metrics
        values: dict[str, float] = {}
        if self.mean_dice_metric in metrics:
            mean = float(metrics[self.mean_dice_metric])
            values["val_mean_dice"] = mean
            if mean > self._best[0]:
                self._best = (mean, epoch)
            values["best_val_mean_dice"] = self._best[0]
            values["best_epoch"] = self._best[1]
        per_class = metrics.get(self.per_class_dice_metric)
        if per_class is not None:
            scores = torch.as_tensor(per_class).flatten().tolist()
            names = self.class_names
            if len(names) == len(scores) + 1:  # background not scored
                names = names[1:]
            for i, score in enumerate(scores):
                name = names[i] if i < len(names) else f"class{i + 1}"
                values[f"val_dice_{name}"] = score
        self.log_metrics(values, epoch)
        self.flush()

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Set tags on the run (no-op off rank 0 or before the run starts)."""
        if self.client is None or self.run_id is None:
            return
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    # -- artifacts ------------------------------------------------------------------------------
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Copy a file into the run's artifacts (no-op off rank 0 or before the run starts)."""
        if self.client is None or self.run_id is None:
            return
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: Mapping[str, Any], artifact_file: str) -> None:
        """Write ``data`` as JSON into the run's artifacts at ``artifact_file``."""
        if self.client is None or self.run_id is None:
            return
        self.client.log_dict(self.run_id, jsonable(dict(data)), artifact_file)
