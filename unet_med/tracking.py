"""MLflow tracking of bundle runs: the store, its reachability check and the run handler.

Every training run is tracked, without the user asking: by default in an SQLite store inside
the run's output folder (``sqlite:///<output_dir>/mlflow.db``, artifacts under
``<output_dir>/mlartifacts``), or at any ``--tracking_uri``. Names are flat and stable so runs
compare across bundles: params ``net.preset``, ``optim.lr``, ``data.manifest_sha256``, ...;
metrics ``train_loss`` (step = iteration), ``val_mean_dice`` and ``val_dice_<class>`` (step =
epoch), ``best_val_mean_dice``, ``best_epoch``, ``epoch_time_s``, ``samples_per_s``,
``peak_memory_mb``; tags ``bundle.name``, ``bundle.version``, ``net.preset``, ``git.commit``,
``host.device``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from unet_med.atomic_files import atomic_output
from unet_med.tracking_store import (
    TrackingStoreError,
    check_tracking_store,
    get_or_create_experiment,
    prepare_store,
)

__all__ = [
    "TrackingStoreError",
    "default_tracking_uri",
    "resolve_tracking_uri",
    "check_tracking_uri",
    "artifact_location_for",
    "git_commit",
    "run_name_for",
    "MLflowTracker",
    "log_evaluation",
    "RUN_FILE",
]

logger = logging.getLogger(__name__)

#: File in the output folder that remembers the MLflow run of a training, so a resumed training
#: continues the same run.
RUN_FILE = "mlflow_run.json"
_PARAM_MAX = 6000  # MLflow's limit on a param value's length (characters)


def default_tracking_uri(output_dir: str | os.PathLike) -> str:
    """``sqlite:///<absolute output_dir>/mlflow.db``: an embedded store, no server needed."""
    return "sqlite:///" + str(Path(output_dir).resolve() / "mlflow.db")


def resolve_tracking_uri(tracking_uri: str | None, output_dir: str | os.PathLike) -> str:
    """The URI a run uses: ``tracking_uri`` when given (and not empty/"none"), else the default
    SQLite store in ``output_dir``. Plain paths and ``file://`` URIs are refused because MLflow 3
    no longer supports the file store."""
    if tracking_uri is None or str(tracking_uri).strip().lower() in ("", "none", "null", "default"):
        return default_tracking_uri(output_dir)
    uri = str(tracking_uri).strip()
    if uri.startswith("file:") or "://" not in uri:
        raise TrackingStoreError(
            f"tracking URI {uri!r} is a file path; MLflow 3 no longer supports the file store. "
            f"Use an SQLite store such as "
            f"'sqlite:///{Path(uri.removeprefix('file://')).resolve()}/mlflow.db' "
            "or a server URI such as 'http://host:5000'."
        )
    return uri


def artifact_location_for(tracking_uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: for an SQLite store ``mlartifacts`` next to
    the database file (``<output_dir>/mlartifacts`` for the default store); for a server, the
    server decides (None)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def check_tracking_uri(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with a clear message, when the tracking store cannot be used.

    For ``http(s)://`` the server's ``/health`` endpoint must answer within ``timeout_s``
    seconds; for ``sqlite:///`` the database folder must be creatable and writable and the
    store must open. Raises :class:`~unet_med.tracking_store.TrackingStoreError`.
    """
    hint = "pass --tracking_uri with a reachable store (default: sqlite:///<output_dir>/mlflow.db)"
    if tracking_uri.startswith(("http://", "https://")):
        check_tracking_store(tracking_uri, timeout_s=timeout_s, must_exist=False)
        return
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=db.parent, prefix=".write-test-"):
                pass
        except OSError as err:
            raise TrackingStoreError(
                f"MLflow store {tracking_uri}: folder {db.parent} is not writable ({err}); {hint}"
            ) from err
    try:
        prepare_store(tracking_uri)
    except TrackingStoreError as err:
        raise TrackingStoreError(f"{err}; {hint}") from err


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
    """``<bundle>-<preset>-<YYYYmmdd-HHMMSS>`` (local time)."""
    return f"{bundle_name}-{preset}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(when))}"


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def _param_value(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        value = list(value)
    text = json.dumps(_jsonable(value)) if not isinstance(value, str) else value
    return text[:_PARAM_MAX]


def _peak_memory_mb(device: torch.device | None) -> float:
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
    them (checkpoints, pictures) and the resolved config at the start.

    Written instead of MONAI's ``MLFlowHandler`` because the bundle contract needs one run shared
    by trainer and evaluator, continued on resume, per-class Dice under class names, flat stable
    param names, tags, and artifacts in named folders. Only rank 0 of a distributed run logs.

    Args:
        output_dir: the run's output folder (default store, run file, resolved config).
        bundle_name: ``bundle.name`` tag, default experiment name and run-name prefix.
        bundle_version: ``bundle.version`` tag.
        preset: the network preset (``net.preset`` tag, run name).
        params: flat params (``net.base_width``, ``optim.lr``, ...); values are logged as text
            (sequences as JSON).
        tracking_uri: store URI; None means ``sqlite:///<output_dir>/mlflow.db``.
        experiment_name: None means ``bundle_name``.
        class_names: names of the classes, background first; ``val_dice_<name>`` per class
            (the background class excluded when the per-class metric leaves it out).
        resume: continue the run recorded in ``<output_dir>/mlflow_run.json`` when it exists.
        loss_key: key of the loss in the trainer's output.
        mean_dice_metric / per_class_dice_metric: names of the evaluator metrics that hold the
            mean Dice (a float) and the per-class Dice (a tensor, one value per class).
        device: the training device (``host.device`` tag, peak memory).
        flush_every: iterations between batched writes of ``train_loss``.
        config: the config to log as ``config/resolved_config.json``.
        config_file: a JSON file holding that config instead (the bundles pass the executed
            config that :class:`unet_med.bundle.UNetMedWorkflow` exports, ``@save_execute_config``);
            None and no ``config``: an empty config is logged.
        resolved: resolved values of the top-level hyperparameters, added to the logged config
            under ``"_resolved_"``.
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
        config: Mapping[str, Any] | None = None,
        resolved: Mapping[str, Any] | None = None,
        config_file: str | os.PathLike | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.bundle_name = bundle_name
        self.bundle_version = str(bundle_version)
        self.preset = preset
        self.params = dict(params or {})
        self.tracking_uri = resolve_tracking_uri(tracking_uri, output_dir)
        self.experiment_name = experiment_name or bundle_name
        self.class_names = [str(c) for c in class_names]
        self.resume = bool(resume)
        self.loss_key = loss_key
        self.mean_dice_metric = mean_dice_metric
        self.per_class_dice_metric = per_class_dice_metric
        self.device = torch.device(device) if device is not None else None
        self.flush_every = max(1, int(flush_every))
        self.enabled = _rank() == 0
        self.client = None
        self.run_id: str | None = None
        self._pending: list = []
        self._epoch_start = 0.0
        self._best: tuple[float, int] = (-1.0, -1)
        if config is None and config_file is not None:
            config = json.loads(Path(config_file).read_text())
        self.config = _jsonable(dict(config)) if config is not None else {}
        if resolved is not None:
            self.config["_resolved_"] = _jsonable(dict(resolved))
        if self.enabled:
            check_tracking_uri(self.tracking_uri)

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

    def _run_file(self) -> Path:
        return self.output_dir / RUN_FILE

    def _previous_run_id(self) -> str | None:
        path = self._run_file()
        if not (self.resume and path.is_file()):
            return None
        record = json.loads(path.read_text())
        if record.get("tracking_uri") != self.tracking_uri:
            logger.warning("%s names another store (%s); new run", path, record.get("tracking_uri"))
            return None
        return record.get("run_id")

    def start(self, engine=None) -> str | None:
        """Create (or re-open on resume) the run; log params, tags and the resolved config."""
        if not self.enabled or self.run_id is not None:
            return self.run_id
        from mlflow.entities import Param, RunTag

        self.client = prepare_store(self.tracking_uri)
        experiment_id = get_or_create_experiment(
            self.client, self.experiment_name, artifact_location_for(self.tracking_uri)
        )
        previous = self._previous_run_id()
        tags = {
            "bundle.name": self.bundle_name,
            "bundle.version": self.bundle_version,
            "net.preset": self.preset,
            "git.commit": git_commit() or "unknown",
            "host.device": str(self.device or "cpu"),
        }
        if previous is not None:
            run = self.client.get_run(previous)
            self.run_id = run.info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
            resumed = int(run.data.tags.get("unet_med.resumed", "0")) + 1
            self.client.set_tag(self.run_id, "unet_med.resumed", str(resumed))
            logged = run.data.params
            metric = run.data.metrics
            if "best_val_mean_dice" in metric:
                best_epoch = int(metric.get("best_epoch", -1))
                self._best = (metric["best_val_mean_dice"], best_epoch)
        else:
            run = self.client.create_run(
                experiment_id, run_name=run_name_for(self.bundle_name, self.preset), tags=tags
            )
            self.run_id = run.info.run_id
            logged = {}
        params = {k: _param_value(v) for k, v in self.params.items() if k not in logged}
        if params:
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in params.items()])
        if previous is None:
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self._write_run_file(experiment_id)
        self.log_dict(self.config, "config/resolved_config.json")
        logger.info(
            "MLflow run %s (%s) in %s; open the UI with: mlflow ui --backend-store-uri %s",
            self.run_id, "resumed" if previous else "new", self.tracking_uri, self.tracking_uri,
        )
        return self.run_id

    def _write_run_file(self, experiment_id: str) -> None:
        record = {"run_id": self.run_id, "experiment_id": experiment_id, "tracking_uri": self.tracking_uri}
        with atomic_output(self._run_file()) as tmp:
            tmp.write_text(json.dumps(record, indent=2))

    def finish(self, engine=None) -> None:
        """Flush pending metrics and mark the run FINISHED."""
        if self.client is None or self.run_id is None:
            return
        self.flush()
        self.client.set_terminated(self.run_id, status="FINISHED")
        history = self.client.get_metric_history(self.run_id, "val_mean_dice")
        if history:
            last = max(history, key=lambda m: (m.step, m.timestamp))
            logger.info(
                "validation mean Dice: final %.4f (epoch %d), best %.4f (epoch %d)",
                last.value, last.step, self._best[0], self._best[1],
            )
        logger.info(
            "MLflow run %s finished in %s; open the UI with: mlflow ui --backend-store-uri %s",
            self.run_id, self.tracking_uri, self.tracking_uri,
        )

    def fail(self, engine=None, error: BaseException | None = None) -> None:
        """Flush and mark the run FAILED, then let the exception propagate."""
        if self.client is not None and self.run_id is not None:
            self.flush()
            self.client.set_terminated(self.run_id, status="FAILED")
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
        for start in range(0, len(self._pending), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=self._pending[start : start + 1000])
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
        self.client.log_dict(self.run_id, _jsonable(dict(data)), artifact_file)


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
    summary ``metrics``, ``params`` and the per-case CSV as artifact ``evaluation/``; linked to
    the training run of ``output_dir`` by the tag ``unet_med.training_run_id`` when that run is
    known. Returns the run id."""
    from mlflow.entities import Metric, Param

    uri = resolve_tracking_uri(tracking_uri, output_dir)
    check_tracking_uri(uri)
    client = prepare_store(uri)
    experiment = experiment_name or bundle_name
    experiment_id = get_or_create_experiment(client, experiment, artifact_location_for(uri))
    tags = {
        "bundle.name": bundle_name,
        "bundle.version": str(bundle_version),
        "net.preset": preset,
        "git.commit": git_commit() or "unknown",
        "unet_med.run_kind": "evaluation",
    }
    run_file = Path(output_dir) / RUN_FILE
    if run_file.is_file():
        tags["unet_med.training_run_id"] = json.loads(run_file.read_text()).get("run_id", "")
    name = run_name_for(bundle_name, f"{preset}-eval")
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    stamp = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items() if v == v],  # NaN: not logged
        params=[Param(k, _param_value(v)) for k, v in (params or {}).items()],
    )
    client.log_artifact(run.info.run_id, str(csv_path), "evaluation")
    client.set_terminated(run.info.run_id, status="FINISHED")
    return run.info.run_id
