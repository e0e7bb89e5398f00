"""Planning on first use: what a training started with only ``--manifest`` does before its first
epoch. The bundles' planned ids (``normalization``, ``spacing``, ``patch_size``, ...) default to
``$@plan[...]`` expressions, and ``plan`` is :func:`plan_for_training`: the dataset fingerprint is
computed once and cached in the run's output folder (reused while the manifest's bytes are
unchanged), the plan is made from it and written beside it. An id given on the command line or
in a plan file (``--config_file "['training.json','PLAN.json']"``) replaces the expression, so
explicit choices always win and the plan is never computed for them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from unet_med.distributed import is_main_process

__all__ = ["PLAN_FOLDER", "plan_for_training", "effective_plan"]

log = logging.getLogger(__name__)

#: Folder of a run's output folder holding ``fingerprint.json`` and ``plan.json``.
PLAN_FOLDER = "plan"


def plan_for_training(
    manifest: str | os.PathLike,
    *,
    bundle: str,
    output_dir: str | os.PathLike,
    device: Any = "cpu",
    num_classes: int | None = None,
    modality: str | None = None,
    memory_budget_mb: float | None = None,
) -> dict[str, Any]:
    """The plan of a training run: ``<output_dir>/plan/plan.json``, made from the (cached)
    fingerprint of ``manifest``'s training scans for bundle ``bundle`` on ``device``.

    In a distributed run rank 0 plans while the other ranks wait, then all read the same file.

    Args:
        manifest: the training manifest.
        bundle: the bundle's name (``unet2d_paper``/``unet3d``) or folder.
        output_dir: the run's output folder.
        device: the training device (a CPU plan is sized for minutes, a GPU plan as nnU-Net's).
        num_classes: declared classes, so a label value outside them is refused before training.
        modality: ``CT``/``MR``/``other`` to override the detected modality (None: detect).
        memory_budget_mb: memory one training step may use (None: the device's default).

    Raises:
        FingerprintError: bad data, naming the scan; PlanError: data the bundle cannot train.
    """
    import torch

    from unet_med.planning.fingerprint import cached_fingerprint
    from unet_med.planning.plan import make_plan, read_plan, write_plan

    folder = Path(output_dir) / PLAN_FOLDER
    path = folder / "plan.json"
    device = str(torch.device(device) if not isinstance(device, torch.device) else device)
    if is_main_process():
        fingerprint = cached_fingerprint(
            manifest, folder, num_classes=num_classes, modality=modality, progress=True
        )
        plan = make_plan(
            fingerprint,
            bundle=bundle,
            device=device,
            memory_budget_mb=memory_budget_mb,
            plan_path=str(path),
        )
        write_plan(plan, path)
        log.info(
            "planned from the data (%s, %s scans): normalization %s, spacing %s mm, patch %s x %d, "
            "base width %d, %d poolings, %d iterations per epoch -> %s (explicit --ids still win)",
            fingerprint["modality"], len(fingerprint["scans"]), plan["normalization"], plan["spacing"],
            plan["patch_size"], plan["batch_size"], plan["base_width"], plan["depth"],
            plan["iterations_per_epoch"], path,
        )  # fmt: skip
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    return read_plan(path) if not is_main_process() else plan


def effective_plan(**ids: Any) -> dict[str, Any]:
    """The planned ids as the run executes them (from the plan, a plan file or the command line),
    saved as ``plan.json`` beside the checkpoint and applied by ``unet-med infer``. ``None``
    values stay (they mean "not used", e.g. ``intensity_clip`` of a z-score normalisation)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in ids.items()}
