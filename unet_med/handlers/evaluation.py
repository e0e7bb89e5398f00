"""The per-case report of an evaluation: Dice and surface distances per case and class, as CSV
and as an MLflow run linked to the training run."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Engine, Events

from unet_med.atomic_files import atomic_output
from unet_med.distributed import is_main_process

__all__ = ["EvaluationReport"]

logger = logging.getLogger(__name__)


class EvaluationReport:
    """Per-case Dice, 95th percentile Hausdorff distance (HD95) and average symmetric surface
    distance (ASSD) per foreground class, written to ``<folder>/per_case_metrics.csv`` (one row
    per case, ``subject_id`` first) when the evaluator completes, and logged to MLflow as a run
    linked to the training run (tag ``unet_med.training_run_id``).

    Distances are in mm, from the voxel spacing of the prediction's affine (the evaluated space);
    a class absent from the label or the prediction has no distance (empty cell). Written here
    instead of MONAI's ``MetricsSaver`` because that writes one file per metric and measures
    surface distances in voxels; the metrics themselves are MONAI's (``compute_dice``,
    ``compute_hausdorff_distance``, ``compute_average_surface_distance``).

    Args:
        folder: output folder of the CSV.
        class_names: names of the classes, background first.
        tracker_kwargs: arguments of :func:`unet_med.tracking.log_evaluation` (``output_dir``,
            ``bundle_name``, ``preset``, ``tracking_uri``, ``experiment_name``, ``params``); None
            writes the CSV only.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        class_names: Sequence[str],
        tracker_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.class_names = [str(c) for c in class_names]
        self.tracker_kwargs = dict(tracker_kwargs) if tracker_kwargs is not None else None
        self.rows: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine: Engine) -> None:
        """One row per case of the iteration's (decollated) output: ``pred`` and ``label`` one-hot."""
        from monai.data.utils import affine_to_spacing
        from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        for item, source in zip(outputs, batch, strict=False):
            pred = item["pred"][None].float()
            label = item["label"][None].float()
            dims = pred.ndim - 2
            affine = getattr(item["pred"], "affine", None)
            spacing = (
                [float(s) for s in affine_to_spacing(affine, r=dims)] if affine is not None else [1.0] * dims
            )
            dice = compute_dice(pred, label, include_background=False)[0]
            present = (pred[0, 1:].flatten(1).any(1) & label[0, 1:].flatten(1).any(1)).tolist()
            hd95 = compute_hausdorff_distance(
                pred, label, include_background=False, percentile=95, spacing=spacing
            )[0]
            assd = compute_average_surface_distance(
                pred, label, include_background=False, symmetric=True, spacing=spacing
            )[0]
            subject = source.get("subject_id") if isinstance(source, Mapping) else None
            row: dict[str, Any] = {"subject_id": subject or f"case{len(self.rows)}"}  # k-th case evaluated
            names = self.class_names[1:] if len(self.class_names) == pred.shape[1] else [
                f"class{i}" for i in range(1, pred.shape[1])
            ]
            for i, name in enumerate(names):
                row[f"dice_{name}"] = float(dice[i])
                row[f"hd95_mm_{name}"] = float(hd95[i]) if present[i] else float("nan")
                row[f"assd_mm_{name}"] = float(assd[i]) if present[i] else float("nan")
            row["mean_dice"] = float(np.nanmean([row[f"dice_{n}"] for n in names]))
            self.rows.append(row)

    def write(self, engine: Engine) -> Path | None:
        """Write the CSV (rank 0) and log the evaluation run; returns the CSV path."""
        import pandas as pd

        if not is_main_process():
            return None
        frame = pd.DataFrame(self.rows)
        path = self.folder / "per_case_metrics.csv"
        with atomic_output(path) as tmp:
            frame.to_csv(tmp, index=False)
        summary = {f"test_{c}": float(frame[c].mean()) for c in frame.columns if c != "subject_id"}
        summary["test_cases"] = float(len(frame))
        logger.info("per-case metrics of %d cases -> %s; %s", len(frame), path,
                    ", ".join(f"{k} {v:.4f}" for k, v in summary.items()))
        if self.tracker_kwargs is not None:
            from unet_med.tracking import log_evaluation

            log_evaluation(csv_path=path, metrics=summary, **self.tracker_kwargs)
        return path
