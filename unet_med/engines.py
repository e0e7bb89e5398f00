"""Ignite handlers and engine pieces the bundles attach to MONAI's ``SupervisedTrainer`` and
``SupervisedEvaluator``: batches carrying the border weight map, atomic checkpoints with resume,
a progress bar with the loss, learning-curve and prediction-overlay pictures.

Each handler has ``attach(engine)`` so a bundle lists it in ``train_handlers``/``val_handlers``;
those that need both engines tell them apart by ``isinstance(engine, monai.engines.Evaluator)``.
Only rank 0 of a distributed run writes files.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.engines import PrepareBatch, default_prepare_batch
from monai.utils import CommonKeys

from unet_med.atomic_files import atomic_output
from unet_med.plots import plot_learning_curve, plot_overlay

__all__ = [
    "PrepareBatchWithWeight",
    "save_atomic",
    "TrainingCheckpoint",
    "ProgressBar",
    "LearningCurvePlot",
    "ValidationOverlays",
    "plot_learning_curve",
    "plot_overlay",
    "is_main_process",
]

logger = logging.getLogger(__name__)

# Written beside ``model.pt``: the architecture of the saved weights (``UNet`` arguments).
NETWORK_FILE = "network.json"


def is_main_process() -> bool:
    """True off a distributed run, or on its rank 0 (before the process group exists, the
    ``RANK`` variable that ``torchrun`` sets decides)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def _unwrap(network: torch.nn.Module) -> torch.nn.Module:
    return network.module if hasattr(network, "module") else network


class PrepareBatchWithWeight(PrepareBatch):
    """Batch -> ``(image, (label, weight))`` so the trainer hands the border weight map to
    :class:`~unet_med.losses.WeightedCrossEntropyLoss` (MONAI's trainer passes the target alone
    to the loss). Without a ``weight`` key in the batch the target is the plain label."""

    def __init__(self, weight_key: str = "weight") -> None:
        self.weight_key = weight_key

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, Any]:
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        weight = batchdata.get(self.weight_key)
        if weight is None:
            return image, label
        weight = torch.as_tensor(weight).to(device=device, non_blocking=non_blocking)
        return image, (label, weight)


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A crash, a kill or a full disk leaves either the previous file or the new one, never a
    half-written file (the rename is atomic on POSIX file systems). Written here because
    MONAI's ``CheckpointSaver`` saves with ``atomic=False``; the mechanics are
    :func:`unet_med.atomic_files.atomic_output`.
    """
    with atomic_output(path, suffix="", fsync=True) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    return Path(path)


class TrainingCheckpoint:
    """Checkpoints of a training, written atomically under ``<output_dir>/models/``:

    - ``checkpoint_last.pt`` after every ``save_every`` epochs (and at the end): network,
      optimizer, LR scheduler, trainer counters (epoch, iteration) and the best metric so far;
    - ``model.pt``: the network's ``state_dict`` alone, each time the validation metric improves
      (the "best" model; without validation, the last one).

    With ``resume=True`` and ``checkpoint_last.pt`` present, the trainer restarts from it when it
    starts: a run killed mid-epoch repeats that epoch and ends after the same number of epochs
    as an uninterrupted one. Both files load with ``torch.load(..., weights_only=True)``.

    Attach to the trainer and to the evaluator (for ``model.pt``).

    Args:
        output_dir: the run's output folder.
        network, optimizer, lr_scheduler: the objects whose state is saved.
        resume: restart from ``checkpoint_last.pt`` when it exists.
        metric_name: evaluator metric that decides "best" (higher is better).
        save_every: epochs between ``checkpoint_last.pt`` writes.
        tracker: an :class:`~unet_med.tracking.MLflowTracker`; ``model.pt`` is logged to it as
            artifact ``models/model.pt`` when the training completes.
    """

    LAST = "checkpoint_last.pt"
    BEST = "model.pt"

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
    ) -> None:
        self.models_dir = Path(output_dir) / "models"
        self.network = network
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.resume = bool(resume)
        self.metric_name = metric_name
        self.save_every = max(1, int(save_every))
        self.tracker = tracker
        self.best_metric = -float("inf")
        self.best_epoch = -1
        self.trainer = None
        self.has_validation = False

    @property
    def last_path(self) -> Path:
        return self.models_dir / self.LAST

    @property
    def best_path(self) -> Path:
        return self.models_dir / self.BEST

    def attach(self, engine) -> None:
        from ignite.engine import Events
        from monai.engines import Evaluator

        if isinstance(engine, Evaluator):
            self.has_validation = True
            engine.add_event_handler(Events.EPOCH_COMPLETED, self.save_best)
            return
        self.trainer = engine
        engine.add_event_handler(Events.STARTED, self.load_last)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_every), self.save_last)
        engine.add_event_handler(Events.COMPLETED, self.complete)

    # -- saving ---------------------------------------------------------------------------------
    def _last_state(self, engine) -> dict:
        state = {
            "network": _unwrap(self.network).state_dict(),
            "trainer": {
                "epoch": int(engine.state.epoch),
                "iteration": int(engine.state.iteration),
                "epoch_length": int(engine.state.epoch_length),
                "max_epochs": int(engine.state.max_epochs),
            },
            "best_metric": float(self.best_metric),
            "best_epoch": int(self.best_epoch),
        }
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        if self.lr_scheduler is not None:
            state["lr_scheduler"] = self.lr_scheduler.state_dict()
        return state

    def save_last(self, engine) -> None:
        if is_main_process():
            save_atomic(self._last_state(engine), self.last_path)

    def save_best(self, evaluator) -> None:
        value = evaluator.state.metrics.get(self.metric_name)
        if value is None:
            return
        value = float(value)
        if value > self.best_metric:
            self.best_metric = value
            self.best_epoch = int(evaluator.state.epoch)
            if is_main_process():
                self.save_best_model()
                logger.info("best %s %.4f at epoch %d -> %s", self.metric_name, value, self.best_epoch,
                            self.best_path)

    def save_best_model(self) -> None:
        """``model.pt`` (the state dict alone, as MONAI's bundle tools expect) and, for a U-Net of
        this project, ``network.json`` beside it: the architecture the weights belong to, so
        ``unet-med infer`` rebuilds it whatever overrides (e.g. ``--base_width``) trained it."""
        network = _unwrap(self.network)
        save_atomic(network.state_dict(), self.best_path)
        config = getattr(network, "config", None)
        if isinstance(config, dict):
            with atomic_output(self.best_path.with_name(NETWORK_FILE)) as tmp:
                tmp.write_text(json.dumps({"_target_": "unet_med.networks.UNet", **config}, indent=2) + "\n")

    def complete(self, engine) -> None:
        if not is_main_process():
            return
        if engine.state.epoch % self.save_every:
            self.save_last(engine)
        if not self.has_validation:
            self.save_best_model()
        if self.tracker is not None and self.best_path.is_file():
            self.tracker.log_artifact(self.best_path, "models")

    # -- resuming -------------------------------------------------------------------------------
    def load_last(self, engine) -> None:
        """Restore network, optimizer, scheduler, counters and best metric (``resume=True``)."""
        if not self.resume:
            return
        if not self.last_path.is_file():
            logger.info("resume requested but %s does not exist: starting from scratch", self.last_path)
            return
        checkpoint = torch.load(self.last_path, map_location="cpu", weights_only=True)
        _unwrap(self.network).load_state_dict(checkpoint["network"])
        if self.optimizer is not None and "optimizer" in checkpoint:
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        if self.lr_scheduler is not None and "lr_scheduler" in checkpoint:
            self.lr_scheduler.load_state_dict(checkpoint["lr_scheduler"])
        self.best_metric = float(checkpoint.get("best_metric", -float("inf")))
        self.best_epoch = int(checkpoint.get("best_epoch", -1))
        # the counters come from the checkpoint, the number of epochs from this run's config
        max_epochs = engine.state.max_epochs
        saved = checkpoint["trainer"]
        if saved["epoch"] > max_epochs:
            raise ValueError(
                f"{self.last_path} was saved after epoch {saved['epoch']}, beyond this run's "
                f"{max_epochs} epochs; raise --epochs or start a fresh output_dir"
            )
        engine.state.epoch = int(saved["epoch"])
        engine.state.iteration = int(saved["iteration"])
        engine.state.max_epochs = max_epochs
        logger.info("resumed from %s at epoch %d, iteration %d", self.last_path, engine.state.epoch,
                    engine.state.iteration)


class ProgressBar:
    """Ignite's tqdm progress bar (iterations, ETA) showing the current loss; ``attach(engine)``
    for ``train_handlers``. Off rank 0 of a distributed run it does nothing."""

    def __init__(self, loss_key: str = CommonKeys.LOSS, persist: bool = False) -> None:
        self.loss_key = loss_key
        self.persist = persist

    def attach(self, engine) -> None:
        from ignite.handlers import ProgressBar as IgniteProgressBar

        if not is_main_process():
            return

        def loss_of(output: Any) -> dict[str, float]:
            if isinstance(output, Mapping) and self.loss_key in output:
                loss = output[self.loss_key]
                return {"loss": loss.detach().item() if isinstance(loss, torch.Tensor) else float(loss)}
            return {}

        IgniteProgressBar(persist=self.persist).attach(engine, output_transform=loss_of)


class LearningCurvePlot:
    """Draws ``<output_dir>/plots/learning_curve.png`` when the training completes (and every
    ``every`` epochs) from the MLflow run's metric history (so a resumed run's curve starts at
    epoch 1), and logs it to the run as artifact ``plots/learning_curve.png``."""

    def __init__(self, output_dir: str | os.PathLike, tracker: Any, every: int = 0) -> None:
        self.path = Path(output_dir) / "plots" / "learning_curve.png"
        self.tracker = tracker
        self.every = int(every)

    def attach(self, engine) -> None:
        from ignite.engine import Events

        if not is_main_process():
            return
        if self.every > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.every), self)
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
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

    def attach(self, engine) -> None:
        from ignite.engine import Events

        if not is_main_process():
            return
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._draw)

    def _reset(self, engine) -> None:
        self._cases = []

    def _collect(self, engine) -> None:
        output = engine.state.output
        items = output if isinstance(output, list) else [output]
        for item in items:
            if len(self._cases) >= self.n_cases or not isinstance(item, Mapping):
                return
            if not all(k in item for k in ("image", "label", "pred")):
                return
            name = f"case{len(self._cases)}"
            self._cases.append((item["image"].cpu(), item["label"].cpu(), item["pred"].cpu(), name))

    def _draw(self, engine) -> None:
        value = engine.state.metrics.get(self.metric_name)
        if value is None or float(value) <= self._best:
            return
        self._best = float(value)
        for image, label, pred, name in self._cases:
            title = f"{name}, epoch {engine.state.epoch}: label (green) / prediction (red)"
            path = plot_overlay(image, label, pred, self.folder / f"{name}.png", title)
            if self.tracker is not None:
                self.tracker.log_artifact(path, "overlays")


# -- bundle set-up: checks that run before the first epoch --------------------------------------
def input_patch_size(network: torch.nn.Module, patch_size: int | Sequence[int]) -> tuple[int, ...]:
    """The network input size (voxels) whose output is exactly ``patch_size`` (the bundles'
    ``patch_size`` is the network *output* size; a valid U-Net reads a larger tile).

    Raises ``ValueError`` naming the nearest legal output sizes when no input gives exactly
    ``patch_size`` (a valid U-Net's outputs are spaced by its pooling period, e.g. 16 voxels for
    the paper's 4 poolings).
    """
    from unet_med.networks.shapes import min_input_size, valid_output_size

    dims = int(getattr(network, "spatial_dims", 2))
    sizes = (int(patch_size),) * dims if isinstance(patch_size, int) else tuple(int(s) for s in patch_size)
    if len(sizes) != dims:
        raise ValueError(f"patch_size needs {dims} sizes for a {dims}D network, got {list(sizes)}")
    spec = getattr(network, "spec", None)
    if spec is None:
        return sizes
    inputs = min_input_size(sizes, spec)
    outputs = valid_output_size(inputs, spec)
    if outputs == sizes:
        return inputs
    period = 2**spec.poolings
    bad = [i for i, (o, s) in enumerate(zip(outputs, sizes, strict=True)) if o != s]
    details = "; ".join(
        f"axis {i}: {sizes[i]} is not a legal output size, nearest legal "
        f"{_legal_output_below(sizes[i], spec)} (below) and {outputs[i]} (above)"
        for i in bad
    )
    raise ValueError(
        f"patch_size {list(sizes)} (the network output size) is illegal for this {spec.padding}-padding "
        f"U-Net, whose output sizes are spaced by {period} voxels: {details}"
    )


def _legal_output_below(size: int, spec: Any) -> int | None:
    from unet_med.networks.shapes import is_legal_size, valid_output_size

    best = None
    for s in range(1, size + 400):
        if is_legal_size(s, spec):
            out = valid_output_size(s, spec)[0]
            if out > size:
                break
            best = out
    return best


def check_override_ids(bundle_root: str | os.PathLike) -> None:
    """Refuse a command-line override whose id is in none of the bundle's config files (a typo
    like ``--epoch 3`` would otherwise be ignored silently); the error lists the valid ids.

    The active config is found on the call stack (see :func:`unet_med.tracking`), so call this
    from a bundle expression (the ``initialize`` list).
    """
    import json

    from unet_med.tracking import _active_bundle_config

    config = _active_bundle_config()
    if config is None:
        return
    known: set[str] = set()
    configs = Path(bundle_root) / "configs"
    for path in sorted(configs.glob("*.json")):
        if path.name == "metadata.json":
            continue
        known |= set(json.loads(path.read_text()))
    known |= {"_meta_", "imports", "initialize", "run", "finalize", "training", "evaluating", "inferring"}
    unknown = sorted(k for k in config if k not in known and not k.startswith("_"))
    if unknown:
        overridable = sorted(k for k in known if not k.startswith("_") and k not in ("imports",))
        raise ValueError(
            f"unknown config id(s) {unknown} (from the command line?); the bundle in {bundle_root} knows: "
            f"{overridable}"
        )


def prepare_manifest(
    manifest: str | os.PathLike,
    demo_manifest: str | os.PathLike,
    *,
    dims: int,
    **demo_kwargs: Any,
) -> Path:
    """The manifest a training reads, checked before the first epoch.

    The bundles' default manifest is the demo dataset's: when ``manifest`` is that path and the
    file is absent, the demo dataset is generated there (offline, seeded; rank 0 generates while
    other ranks wait). Any other missing manifest is an error naming the file. The manifest is
    then validated and an invalid one stops the run with the validation report.
    """
    from unet_med.data.demo import generate_demo_dataset

    manifest = Path(manifest)
    demo = Path(demo_manifest)
    if not manifest.is_file():
        if manifest.resolve() != demo.resolve():
            raise FileNotFoundError(f"manifest {manifest} does not exist (pass --manifest with a CSV file)")
        if is_main_process():
            logger.info("generating the %dD demo dataset into %s", dims, demo.parent)
            written = generate_demo_dataset(demo.parent, dims=dims, **demo_kwargs)
            if written.resolve() != demo.resolve():
                raise RuntimeError(f"the demo generator wrote {written}, expected {demo}")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    _require_valid_manifest(manifest)
    return manifest


def _require_valid_manifest(manifest: Path) -> None:
    from unet_med.data.manifest import validate_manifest

    report = validate_manifest(manifest)
    if not report.ok:
        raise ValueError(f"invalid manifest {manifest}:\n{report.summary()}")


# -- evaluation ---------------------------------------------------------------------------------
class EvaluationReport:
    """Per-case Dice, 95th percentile Hausdorff distance (HD95) and average symmetric surface
    distance (ASSD) per foreground class, written to ``<folder>/per_case_metrics.csv`` (one row
    per case, ``subject_id`` first) when the evaluator completes, and logged to MLflow as a run
    linked to the training run (tag ``unet_med.training_run_id``).

    Distances are in mm, from the voxel spacing of the prediction's affine (the evaluated space);
    a class absent from the label or the prediction has no distance (empty cell). Written here
    instead of MONAI's ``MetricsSaver`` because that writes one file per metric and measures
    surface distances in voxels.

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

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda _: self.rows.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def collect(self, engine) -> None:
        from monai.data.utils import affine_to_spacing
        from monai.metrics import compute_average_surface_distance, compute_dice, compute_hausdorff_distance

        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batch = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        for k, (item, source) in enumerate(zip(outputs, batch, strict=False)):
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
            row: dict[str, Any] = {"subject_id": subject or f"case{len(self.rows) + k}"}
            names = self.class_names[1:] if len(self.class_names) == pred.shape[1] else [
                f"class{i}" for i in range(1, pred.shape[1])
            ]
            for i, name in enumerate(names):
                row[f"dice_{name}"] = float(dice[i])
                row[f"hd95_mm_{name}"] = float(hd95[i]) if present[i] else float("nan")
                row[f"assd_mm_{name}"] = float(assd[i]) if present[i] else float("nan")
            row["mean_dice"] = float(np.nanmean([row[f"dice_{n}"] for n in names]))
            self.rows.append(row)

    def write(self, engine) -> Path | None:
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


def require_file(path: str | os.PathLike, what: str) -> Path:
    """``FileNotFoundError`` naming ``path`` and what it should hold, unless it is a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist ({what})")
    return path
