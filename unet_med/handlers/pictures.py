"""Pictures drawn during a training and logged to its MLflow run: the learning curve and the
validation overlays. The drawing itself is :mod:`unet_med.plots`; these handlers collect the data
from the engines and the tracker."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events

from unet_med.distributed import is_main_process
from unet_med.plots import plot_learning_curve, plot_overlay

__all__ = ["LearningCurvePlot", "ValidationOverlays"]


class LearningCurvePlot:
    """Draws ``<output_dir>/plots/learning_curve.png`` when the training completes (and every
    ``every`` epochs) from the MLflow run's metric history (so a resumed run's curve starts at
    epoch 1), and logs it to the run as artifact ``plots/learning_curve.png``.

    Args:
        output_dir: the run's output folder.
        tracker: the run's :class:`~unet_med.tracking.MLflowTracker` (the history's source).
        every: epochs between drawings before the end; 0 draws at the end only.
    """

    def __init__(self, output_dir: str | os.PathLike, tracker: Any, every: int = 0) -> None:
        self.path = Path(output_dir) / "plots" / "learning_curve.png"
        self.tracker = tracker
        self.every = int(every)

    def attach(self, engine: Engine) -> None:
        if not is_main_process():
            return
        if self.every > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        tracker = self.tracker
        if tracker is None or tracker.client is None:
            return
        tracker.flush()

        def history(key: str) -> list[tuple[int, float]]:
            return [(m.step, m.value) for m in tracker.client.get_metric_history(tracker.run_id, key)]

        loss, dice = history("train_loss"), history("val_mean_dice")
        plot_learning_curve(loss, dice, self.path, engine.state.epoch_length)
        tracker.log_artifact(self.path, "plots")


class ValidationOverlays:
    """Prediction overlays of the first ``n_cases`` validation cases, drawn each time the
    validation metric improves (so they show the best model) into
    ``<output_dir>/overlays/case<k>.png`` and logged to the MLflow run under ``overlays/``.

    Attach to the evaluator; reads the decollated ``image``, ``label`` and ``pred`` of its output.

    Args:
        output_dir: the run's output folder.
        tracker: the run's :class:`~unet_med.tracking.MLflowTracker`; None draws without logging.
        n_cases: validation cases drawn.
        metric_name: evaluator metric that decides "improves" (higher is better).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        tracker: Any = None,
        n_cases: int = 3,
        metric_name: str = "val_mean_dice",
    ) -> None:
        self.folder = Path(output_dir) / "overlays"
        self.tracker = tracker
        self.n_cases = int(n_cases)
        self.metric_name = metric_name
        self._cases: list[tuple[Any, Any, Any, str]] = []
        self._best = -float("inf")

    def attach(self, engine: Engine) -> None:
        if not is_main_process():
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._draw)

    def _reset(self, engine: Engine) -> None:
        self._cases = []

    def _collect(self, engine: Engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        for item in items:
            if len(self._cases) >= self.n_cases or not isinstance(item, Mapping):
                return
            if not all(k in item for k in ("image", "label", "pred")):
                return
            name = f"case{len(self._cases)}"
            self._cases.append((item["image"].cpu(), item["label"].cpu(), item["pred"].cpu(), name))

    def _draw(self, engine: Engine) -> None:
        value = engine.state.metrics.get(self.metric_name)
        if value is None or float(value) <= self._best:
            return
        self._best = float(value)
        for image, label, pred, name in self._cases:
            title = f"{name}, epoch {engine.state.epoch}: label (green) / prediction (red)"
            path = plot_overlay(image, label, pred, self.folder / f"{name}.png", title)
            if self.tracker is not None:
                self.tracker.log_artifact(path, "overlays")
