"""Time budget of a training: a clean stop at the end of the last epoch that fits, the reason
recorded, and a learning-rate decay that reaches zero by the deadline."""

from __future__ import annotations

import time

import pytest
import torch
from ignite.engine import Engine, Events

from unet_med.handlers.budget import STOP_REASON_TAG, BudgetedPolyLR, TrainingBudget


class _Tags:
    def __init__(self) -> None:
        self.tags: dict[str, str] = {}

    def set_tags(self, tags):
        self.tags.update(tags)


def _engine(seconds_per_iteration: float) -> Engine:
    return Engine(lambda engine, batch: time.sleep(seconds_per_iteration))


def test_budget_stops_after_the_last_epoch_that_fits_and_tags_the_reason():
    tracker = _Tags()
    engine = _engine(0.05)
    completed = []
    budget = TrainingBudget(time_limit_minutes=0.35 / 60, tracker=tracker)  # 0.35 s; an epoch takes 0.15 s
    budget.attach(engine)
    engine.add_event_handler(Events.COMPLETED, lambda e: completed.append(e.state.epoch))
    engine.run(range(3), max_epochs=100)
    assert completed and 1 <= completed[0] <= 2  # stopped early, at an epoch end, and COMPLETED fired
    assert engine.state.iteration == 3 * engine.state.epoch  # no partial epoch
    assert tracker.tags == {STOP_REASON_TAG: "time_limit"}


def test_budget_stops_mid_epoch_when_one_epoch_overruns_it():
    engine = _engine(0.05)
    budget = TrainingBudget(time_limit_minutes=0.12 / 60)
    budget.attach(engine)
    engine.run(range(20), max_epochs=3)
    assert engine.state.epoch == 1 and engine.state.iteration < 20
    assert budget.stopped_by_time


@pytest.mark.parametrize("limit", [None, 0])
def test_without_a_limit_the_run_ends_by_its_epochs(limit):
    tracker = _Tags()
    engine = _engine(0.0)
    TrainingBudget(limit, tracker=tracker).attach(engine)
    engine.run(range(2), max_epochs=3)
    assert engine.state.epoch == 3
    assert tracker.tags == {STOP_REASON_TAG: "epochs"}


def test_an_early_stopped_run_is_tagged_as_such():
    tracker = _Tags()
    engine = _engine(0.0)
    TrainingBudget(None, tracker=tracker).attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED(once=2), lambda e: e.terminate())
    engine.run(range(2), max_epochs=5)
    assert tracker.tags == {STOP_REASON_TAG: "early_stopping"}


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)


def test_without_a_budget_the_decay_equals_torch_polynomial_lr():
    ours, theirs = _optimizer(), _optimizer()
    schedule = BudgetedPolyLR(ours, total_epochs=7, power=0.9)
    reference = torch.optim.lr_scheduler.PolynomialLR(theirs, total_iters=7, power=0.9)
    for _ in range(9):
        assert ours.param_groups[0]["lr"] == pytest.approx(theirs.param_groups[0]["lr"], abs=1e-12)
        schedule.step()
        reference.step()


def test_the_time_budget_counts_as_progress_and_the_state_loads_weights_only(tmp_path):
    budget = TrainingBudget(time_limit_minutes=1.0)
    optimizer = _optimizer()
    schedule = BudgetedPolyLR(optimizer, total_epochs=1000, power=0.9, budget=budget)
    budget.started = time.monotonic() - 45.0  # three quarters of the minute spent, 0 of 1000 epochs
    schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 0.25**0.9, rel=0.02)
    budget.started = time.monotonic() - 120.0
    schedule.step()
    assert optimizer.param_groups[0]["lr"] == 0.0
    torch.save(schedule.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    assert "budget" not in state and state["last_epoch"] == 2
