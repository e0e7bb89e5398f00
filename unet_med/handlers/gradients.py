"""Gradient-norm clipping for MONAI's ``SupervisedTrainer``, which has no clipping argument."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["GradientClipping"]


class GradientClipping:
    """Clip the total gradient norm of the trained network before every optimiser step (nnU-Net
    clips at 12): the stabiliser that keeps SGD with momentum 0.99 and a batch of one tile from
    collapsing (the paper's recipe without it collapsed for some seeds on the demo data).

    MONAI's ``SupervisedTrainer`` fires ``IterationEvents.BACKWARD_COMPLETED`` after
    ``loss.backward()`` and before ``optimizer.step()``; this handler runs there. Under AMP the
    gradients are unscaled first (``GradScaler.step`` then skips its own unscale). The norm before
    clipping is kept in ``engine.state.grad_norm``.

    Args:
        max_norm: the largest total gradient norm allowed; <= 0 disables clipping.
        norm_type: p of the p-norm over all parameters (2: Euclidean).
    """

    def __init__(self, max_norm: float = 12.0, norm_type: float = 2.0) -> None:
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)

    def attach(self, engine: Any) -> None:
        from monai.engines.utils import IterationEvents

        if self.max_norm > 0 and not engine.has_event_handler(self, IterationEvents.BACKWARD_COMPLETED):
            engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        if getattr(engine, "accumulation_steps", 1) > 1:
            raise ValueError(
                f"GradientClipping does not support gradient accumulation "
                f"(accumulation_steps {engine.accumulation_steps} > 1)"
            )
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        parameters = engine.network.parameters()
        norm = torch.nn.utils.clip_grad_norm_(parameters, self.max_norm, norm_type=self.norm_type)
        engine.state.grad_norm = float(norm)
