"""Training in minutes: a time budget that stops a training cleanly and a polynomial learning-rate
decay that reaches zero when either the epochs or the time run out.

CPU users think in minutes, not epochs (``--time_limit_minutes 15``). Ignite's ``TimeLimit``
stops in the middle of an epoch, whose partial work is never validated; :class:`TrainingBudget`
stops at the end of the last epoch that fits (validation included), and mid-epoch only if one
epoch alone overruns the budget.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["TrainingBudget", "BudgetedPolyLR", "STOP_REASON_TAG"]

logger = logging.getLogger(__name__)

#: MLflow tag saying why a training ended: ``epochs``, ``time_limit`` or ``early_stopping``.
STOP_REASON_TAG = "unet_med.stop_reason"


class TrainingBudget:
    """Stops the trainer when its time budget is spent and records why the training ended.

    After each epoch (and its validation: attach it after the ``ValidationHandler``) the training
    stops when the time left is shorter than the last epoch took; after any iteration it stops
    when the budget is exceeded. Ignite then fires ``COMPLETED`` as usual, so the best checkpoint
    is kept and the MLflow run ends FINISHED, tagged ``unet_med.stop_reason`` (``time_limit``,
    ``epochs`` or ``early_stopping``).

    Args:
        time_limit_minutes: the budget in minutes of wall time from the trainer's start (a
            resumed run gets a fresh budget); None or <= 0: no limit (only the reason is recorded).
        tracker: an :class:`~unet_med.tracking.MLflowTracker` to tag, or None.
    """

    def __init__(self, time_limit_minutes: float | None = None, tracker: Any = None) -> None:
        minutes = float(time_limit_minutes) if time_limit_minutes is not None else 0.0
        self.limit_s = minutes * 60.0 if minutes > 0 else None
        self.tracker = tracker
        self.started: float | None = None
        self.stopped_by_time = False
        self._epoch_started = 0.0
        self._last_epoch_s = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.EPOCH_STARTED, self._start_epoch)
        if self.limit_s is not None:
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._check_iteration)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._check_epoch)
        engine.add_event_handler(Events.COMPLETED, self._record_reason)

    def elapsed_fraction(self) -> float:
        """Share of the time budget spent (0 without a limit or before the start)."""
        if self.limit_s is None or self.started is None:
            return 0.0
        return min(1.0, (time.monotonic() - self.started) / self.limit_s)

    def _start(self, engine: Engine) -> None:
        self.started = time.monotonic()
        self.stopped_by_time = False

    def _start_epoch(self, engine: Engine) -> None:
        self._epoch_started = time.monotonic()

    def _stop(self, engine: Engine, why: str) -> None:
        self.stopped_by_time = True
        logger.info("time limit of %.1f min: %s", self.limit_s / 60.0, why)
        engine.terminate()

    def _check_iteration(self, engine: Engine) -> None:
        if not self.stopped_by_time and time.monotonic() - self.started >= self.limit_s:
            self._stop(engine, f"stopping in epoch {engine.state.epoch} (the budget is spent)")

    def _check_epoch(self, engine: Engine) -> None:
        now = time.monotonic()
        self._last_epoch_s = now - self._epoch_started
        left = self.limit_s - (now - self.started)
        more_epochs = engine.state.epoch < engine.state.max_epochs
        if not self.stopped_by_time and left < self._last_epoch_s and more_epochs:
            self._stop(
                engine,
                f"stopping after epoch {engine.state.epoch}: {left / 60.0:.1f} min left, an epoch takes "
                f"{self._last_epoch_s / 60.0:.1f} min",
            )

    def _record_reason(self, engine: Engine) -> None:
        if self.stopped_by_time:
            reason = "time_limit"
        elif engine.state.epoch < engine.state.max_epochs:
            reason = "early_stopping"
        else:
            reason = "epochs"
        if self.tracker is not None:
            self.tracker.set_tags({STOP_REASON_TAG: reason})


class BudgetedPolyLR(torch.optim.lr_scheduler.LRScheduler):
    """Polynomial decay ``lr = base_lr * (1 - progress) ** power`` (nnU-Net's schedule), where
    progress is the larger of the epochs done / ``total_epochs`` and the share of the time budget
    spent, so a time-limited training still anneals its learning rate to zero by the deadline.
    Stepped once per epoch (MONAI's ``LrScheduleHandler``); without a budget it equals torch's
    ``PolynomialLR(total_iters=total_epochs)``.

    Args:
        optimizer: the optimizer.
        total_epochs: epochs of the full schedule.
        power: the exponent (0.9 as nnU-Net).
        budget: a :class:`TrainingBudget` whose spent share also counts as progress, or None.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_epochs: int,
        power: float = 0.9,
        budget: TrainingBudget | None = None,
        last_epoch: int = -1,
    ) -> None:
        self.total_epochs = max(1, int(total_epochs))
        self.power = float(power)
        self.budget = budget
        super().__init__(optimizer, last_epoch)

    def progress(self) -> float:
        by_epochs = max(0, self.last_epoch) / self.total_epochs
        by_time = self.budget.elapsed_fraction() if self.budget is not None else 0.0
        return min(1.0, max(by_epochs, by_time))

    def get_lr(self) -> list[float]:
        factor = (1.0 - self.progress()) ** self.power
        return [base * factor for base in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in super().state_dict().items() if k != "budget"}
