"""Checkpoints of a training and resuming from them: ``checkpoint_last.pt`` (everything a resumed
run needs), ``model.pt`` (the best weights), ``network.json`` (their architecture) and ``plan.json``
(the preprocessing and training choices they were trained with)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver

from unet_med.atomic_files import atomic_output
from unet_med.distributed import is_main_process

__all__ = ["FixedNameDiskSaver", "TrainingCheckpoint"]

logger = logging.getLogger(__name__)


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if hasattr(network, "module") else network


class FixedNameDiskSaver(DiskSaver):
    """Ignite's :class:`~ignite.handlers.DiskSaver` (``atomic=True``: a temporary file in the
    folder renamed over the target, so a crash, a kill or a full disk leaves the previous file or
    the new one, never a half-written one) for files that keep one name from save to save.

    Ignite's :class:`~ignite.handlers.Checkpoint` deletes the previous file of the same name
    *before* it writes the new one, which would leave no checkpoint at all in between (a kill
    there loses the run); the atomic rename replaces the file anyway, so :meth:`remove` keeps it.
    The folder is created, and may hold other ``.pt`` files (a resumed run's).
    """

    def __init__(self, dirname: str | os.PathLike, **kwargs: Any) -> None:
        kwargs = {"atomic": True, "create_dir": True, "require_empty": False, **kwargs}
        super().__init__(Path(dirname), **kwargs)

    def remove(self, filename: str) -> None:
        """Keep the file: the next save of the same name replaces it atomically."""


class _BestMetric:
    """The best validation metric so far (higher is better) and its epoch: a checkpoint entry, so
    a resumed run replaces ``model.pt`` only with a better model."""

    def __init__(self) -> None:
        self.value = -float("inf")
        self.epoch = -1

    def state_dict(self) -> dict[str, float | int]:
        return {"metric": float(self.value), "epoch": int(self.epoch)}

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        self.value = float(state["metric"])
        self.epoch = int(state["epoch"])


class _TrainerProgress:
    """The trainer's counters as a checkpoint entry: ``epoch``, ``iteration``, ``epoch_length``,
    ``max_epochs``.

    Kept instead of Ignite's ``Engine.state_dict``, which stores the iteration alone and whose
    ``load_state_dict`` adopts the checkpoint's ``max_epochs``: a resumed bundle run takes its
    number of epochs from this run's config (``--epochs``) and refuses a checkpoint saved beyond it.
    """

    def __init__(self, engine: Engine, source: Path) -> None:
        self.engine = engine
        self.source = source

    def state_dict(self) -> dict[str, int]:
        state = self.engine.state
        return {
            "epoch": int(state.epoch),
            "iteration": int(state.iteration),
            "epoch_length": int(state.epoch_length),
            "max_epochs": int(state.max_epochs),
        }

    def load_state_dict(self, saved: Mapping[str, int]) -> None:
        max_epochs = self.engine.state.max_epochs
        if saved["epoch"] > max_epochs:
            raise ValueError(
                f"{self.source} was saved after epoch {saved['epoch']}, beyond this run's "
                f"{max_epochs} epochs; raise --epochs or start a fresh output_dir"
            )
        self.engine.state.epoch = int(saved["epoch"])
        self.engine.state.iteration = int(saved["iteration"])
        self.engine.state.max_epochs = max_epochs


class TrainingCheckpoint:
    """Checkpoints of a training, written atomically under ``<output_dir>/models/``:

    - ``checkpoint_last.pt`` after every ``save_every`` epochs (and at the end): entries
      ``network``, ``optimizer``, ``lr_scheduler`` (their ``state_dict``), ``trainer`` (epoch,
      iteration, epoch length, epochs) and ``best`` (best metric so far and its epoch);
    - ``model.pt``: the network's ``state_dict`` alone (as MONAI's bundle tools expect), each time
      the validation metric improves (the "best" model; without validation, the last one), and
      ``network.json`` beside it (the architecture of those weights) and, given a ``plan``,
      ``plan.json`` (the planned ids as the run executed them, which ``unet-med infer`` applies).

    With ``resume=True`` and ``checkpoint_last.pt`` present, the trainer restarts from it when it
    starts: a run killed mid-epoch repeats that epoch and ends after the same number of epochs
    as an uninterrupted one. Both files load with ``torch.load(..., weights_only=True)``.

    ``checkpoint_last.pt`` is written by Ignite's :class:`~ignite.handlers.Checkpoint` through a
    :class:`FixedNameDiskSaver` and read back by ``Checkpoint.load_objects``. ``model.pt`` goes
    through the same saver directly: a scored ``Checkpoint`` keeps its best score in memory only,
    while here the best score lives in ``checkpoint_last.pt`` (a resumed run keeps it), and a
    training without validation saves its last weights as ``model.pt``.

    Attach to the trainer and to the evaluator (for ``model.pt``).

    Args:
        output_dir: the run's output folder.
        network, optimizer, lr_scheduler: the objects whose state is saved.
        resume: restart from ``checkpoint_last.pt`` when it exists.
        metric_name: evaluator metric that decides "best" (higher is better).
        save_every: epochs between ``checkpoint_last.pt`` writes.
        tracker: an :class:`~unet_med.tracking.MLflowTracker`; ``model.pt``, ``network.json``
            and ``plan.json`` are logged to it as artifacts ``models/...`` when the training completes.
        plan: the run's effective plan (bundle ids -> values), written as ``plan.json``.
    """

    LAST = "checkpoint_last.pt"
    BEST = "model.pt"
    NETWORK = "network.json"
    PLAN = "plan.json"

    def __init__(
        self,
        output_dir: str | os.PathLike,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        lr_scheduler: Any = None,
        *,
        resume: bool = False,
        metric_name: str = "val_mean_dice",
        save_every: int = 1,
        tracker: Any = None,
        plan: Mapping[str, Any] | None = None,
    ) -> None:
        self.models_dir = Path(output_dir) / "models"
        self.plan = dict(plan) if plan is not None else None
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.resume = bool(resume)
        self.metric_name = metric_name
        self.save_every = max(1, int(save_every))
        self.tracker = tracker
        self.has_validation = False
        self._best = _BestMetric()
        self._saver: FixedNameDiskSaver | None = None  # made at the first save: nothing is written before
        self._last: Checkpoint | None = None

    @property
    def last_path(self) -> Path:
        return self.models_dir / self.LAST

    @property
    def best_path(self) -> Path:
        return self.models_dir / self.BEST

    @property
    def best_metric(self) -> float:
        """The best validation metric so far (``-inf`` before the first validation)."""
        return self._best.value

    @property
    def best_epoch(self) -> int:
        """The epoch of :attr:`best_metric` (-1 before the first validation)."""
        return self._best.epoch

    def attach(self, engine: Engine) -> None:
        from monai.engines import Evaluator

        if isinstance(engine, Evaluator):
            self.has_validation = True
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.save_best)
            return
        engine.add_event_handler(Events.STARTED, self.load_last)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_every), self.save_last)
        engine.add_event_handler(Events.COMPLETED, self.complete)

    def _entries(self, trainer: Engine) -> dict[str, Any]:
        """The objects of ``checkpoint_last.pt`` by entry name."""
        entries: dict[str, Any] = {"network": self.network}
        if self.optimizer is not None:
            entries["optimizer"] = self.optimizer
        if self.lr_scheduler is not None:
            entries["lr_scheduler"] = self.lr_scheduler
        entries["trainer"] = _TrainerProgress(trainer, self.last_path)
        entries["best"] = self._best
        return entries

    def _disk(self) -> FixedNameDiskSaver:
        if self._saver is None:
            self._saver = FixedNameDiskSaver(self.models_dir)
        return self._saver

    # -- saving ---------------------------------------------------------------------------------
    def save_last(self, engine: Engine) -> None:
        """Write ``checkpoint_last.pt`` (rank 0)."""
        if not is_main_process():
            return
        if self._last is None:
            self._last = Checkpoint(
                self._entries(engine),
                self._disk(),
                filename_pattern=self.LAST,
                global_step_transform=lambda trainer, _: trainer.state.epoch,
                n_saved=1,
            )
        self._last(engine)

    def save_best(self, evaluator: Any) -> None:
        """After a validation: ``model.pt`` when the metric beats the best so far."""
        value = evaluator.state.metrics.get(self.metric_name)
        if value is None:
            return
        value = float(value)
        if value > self._best.value:
            self._best.value = value
            self._best.epoch = int(evaluator.state.epoch)
            if is_main_process():
                self.save_best_model()
                logger.info("best %s %.4f at epoch %d -> %s", self.metric_name, value, self._best.epoch,
                            self.best_path)

    def save_best_model(self) -> None:
        """``model.pt`` (the state dict alone, as MONAI's bundle tools expect) and, for a U-Net of
        this project, ``network.json`` beside it: the architecture the weights belong to, so
        ``unet-med infer`` rebuilds it whatever overrides (e.g. ``--base_width``) trained it."""
        network = _unwrap(self.network)
        self._disk()(network.state_dict(), self.BEST)
        config = getattr(network, "config", None)
        if isinstance(config, dict):
            with atomic_output(self.models_dir / self.NETWORK) as tmp:
                tmp.write_text(json.dumps({"_target_": "unet_med.networks.UNet", **config}, indent=2) + "\n")
        if self.plan is not None:
            with atomic_output(self.models_dir / self.PLAN) as tmp:
                tmp.write_text(json.dumps(self.plan, indent=2) + "\n")

    def complete(self, engine: Engine) -> None:
        """At the end: the last checkpoint, ``model.pt`` without validation, the MLflow artifact."""
        if not is_main_process():
            return
        stopped_mid_epoch = engine.state.iteration % max(1, engine.state.epoch_length or 1) != 0
        if engine.state.epoch % self.save_every or stopped_mid_epoch:  # e.g. by a time limit
            self.save_last(engine)
        if not self.has_validation or self._best.epoch < 0:
            # no validation, or none before a time limit stopped the run: the last weights
            self.save_best_model()
        if self.tracker is not None:
            for name in (self.BEST, self.NETWORK, self.PLAN):
                if (self.models_dir / name).is_file():
                    self.tracker.log_artifact(self.models_dir / name, "models")

    # -- resuming -------------------------------------------------------------------------------
    def load_last(self, engine: Engine) -> None:
        """Restore network, optimizer, scheduler, counters and best metric (``resume=True``)."""
        if not self.resume:
            return
        if not self.last_path.is_file():
            logger.info("resume requested but %s does not exist: starting from scratch", self.last_path)
            return
        saved = torch.load(self.last_path, map_location="cpu", weights_only=True)
        entries = self._entries(engine)
        Checkpoint.load_objects({name: obj for name, obj in entries.items() if name in saved}, saved)
        logger.info("resumed from %s at epoch %d, iteration %d", self.last_path, engine.state.epoch,
                    engine.state.iteration)
