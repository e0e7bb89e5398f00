"""The console of a training: one progress bar per epoch and one summary line per epoch."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.utils import CommonKeys

from unet_med.distributed import is_main_process

__all__ = ["ProgressBar"]

logger = logging.getLogger(__name__)


class ProgressBar:
    """Ignite's tqdm progress bar (iterations, ETA) showing the current loss, cleared at the end of
    each epoch and replaced by one summary line (``epoch 3/20: mean loss 0.4123, 41.2 s, lr
    0.0083``); ``attach(engine)`` for ``train_handlers``. Nothing else should print per iteration
    (a log line in the middle of a bar breaks it). Off rank 0 of a distributed run it does nothing;
    when standard error is not a terminal (a log file, ``nohup``, a CI job) only the summary lines
    are written: a redrawn bar in a file is hundreds of ``\r`` frames.

    Wraps ``ignite.handlers.ProgressBar`` so a bundle can list it by ``_target_`` (Ignite's
    ``attach`` needs the ``output_transform`` that reads the loss from MONAI's trainer output).
    """

    def __init__(self, loss_key: str = CommonKeys.LOSS, persist: bool = False) -> None:
        self.loss_key = loss_key
        self.persist = persist

    def attach(self, engine: Engine) -> None:
        from ignite.handlers import ProgressBar as IgniteProgressBar

        if not is_main_process():
            return

        def loss_of(output: Any) -> dict[str, float]:
            if isinstance(output, Mapping) and self.loss_key in output:
                loss = output[self.loss_key]
                return {"loss": loss.detach().item() if isinstance(loss, torch.Tensor) else float(loss)}
            return {}

        if sys.stderr.isatty():
            IgniteProgressBar(persist=self.persist).attach(engine, output_transform=loss_of)
        losses: list[float] = []
        started = [0.0]

        def start_epoch(engine: Engine) -> None:
            losses.clear()
            started[0] = time.perf_counter()

        def collect(engine: Engine) -> None:
            losses.extend(loss_of(engine.state.output).values())

        def summary(engine: Engine) -> None:
            optimizer = getattr(engine, "optimizer", None)
            lr = f", lr {optimizer.param_groups[0]['lr']:.3g}" if optimizer is not None else ""
            mean = f"mean loss {sum(losses) / len(losses):.4f}, " if losses else ""
            logger.info(
                "epoch %d/%d: %s%.1f s%s", engine.state.epoch, engine.state.max_epochs, mean,
                time.perf_counter() - started[0], lr,
            )

        engine.add_event_handler(Events.EPOCH_STARTED, start_epoch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, summary)
