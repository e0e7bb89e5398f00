"""The console progress bar of a training."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from ignite.engine import Engine
from monai.utils import CommonKeys

from unet_med.distributed import is_main_process

__all__ = ["ProgressBar"]


class ProgressBar:
    """Ignite's tqdm progress bar (iterations, ETA) showing the current loss; ``attach(engine)``
    for ``train_handlers``. Off rank 0 of a distributed run it does nothing.

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

        IgniteProgressBar(persist=self.persist).attach(engine, output_transform=loss_of)
