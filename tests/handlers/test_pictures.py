"""Pictures of a training: validation overlays of the first cases, redrawn only when the metric
improves; the learning curve from the run's metric history, logged to the run."""

from types import SimpleNamespace

import torch
from ignite.engine import Engine, Events

from unet_med.handlers.pictures import LearningCurvePlot, ValidationOverlays


class _Tracker:
    """The part of MLflowTracker the picture handlers use."""

    def __init__(self, history=None):
        self.logged = []
        self.run_id = "run"
        self.client = SimpleNamespace(
            get_metric_history=lambda run_id, key: [SimpleNamespace(step=s, value=v) for s, v in history[key]]
        ) if history is not None else None

    def flush(self):
        pass

    def log_artifact(self, path, folder):
        self.logged.append((path.name, folder))


def _case(k):
    label = torch.zeros(1, 16, 16)
    label[0, 4:12, 4 + k : 10 + k] = 1
    return {"image": torch.rand(1, 16, 16), "label": label, "pred": torch.roll(label, 1, dims=1)}


def test_overlays_of_the_first_cases_are_drawn_when_the_metric_improves(tmp_path):
    tracker = _Tracker()
    overlays = ValidationOverlays(tmp_path, tracker, n_cases=3)
    evaluator = Engine(lambda engine, batch: [batch])  # decollated output: one dict per case
    dice = iter([0.5, 0.4, 0.7])
    set_metric = lambda engine: engine.state.metrics.update(val_mean_dice=next(dice))  # noqa: E731
    evaluator.add_event_handler(Events.EPOCH_COMPLETED, set_metric)  # before the overlays' handler
    overlays.attach(evaluator)
    cases = [_case(k) for k in range(4)]

    evaluator.run(cases, max_epochs=1)
    drawn = sorted(p.name for p in (tmp_path / "overlays").iterdir())
    assert drawn == ["case0.png", "case1.png", "case2.png"]
    assert tracker.logged == [(f"case{k}.png", "overlays") for k in range(3)]
    evaluator.run(cases, max_epochs=1)  # worse: the pictures keep showing the best model
    assert len(tracker.logged) == 3
    evaluator.run(cases, max_epochs=1)
    assert len(tracker.logged) == 6


def test_learning_curve_is_drawn_from_the_run_history_and_logged(tmp_path):
    history = {"train_loss": [(1, 1.0), (2, 0.8), (3, 0.7), (4, 0.5)], "val_mean_dice": [(1, 0.2), (2, 0.4)]}
    tracker = _Tracker(history)
    curve = LearningCurvePlot(tmp_path, tracker)
    trainer = Engine(lambda engine, batch: None)
    curve.attach(trainer)
    trainer.run([0, 1], max_epochs=2)
    assert (tmp_path / "plots" / "learning_curve.png").stat().st_size > 1000
    assert tracker.logged == [("learning_curve.png", "plots")]
    LearningCurvePlot(tmp_path / "none", _Tracker())(trainer)  # no MLflow run: nothing drawn
    assert not (tmp_path / "none").exists()
