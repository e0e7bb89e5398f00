"""Batch-norm statistics of the 3D bundle's CPU plan: how much of a low validation Dice in the first
epochs is the network, and how much the running statistics it is validated with.

The CPU plan trains ``bundles/unet3d`` with one patch per step, so every training step normalises
each channel with that patch's own statistics, and validation uses the running averages that
PyTorch's batch norm keeps of them (momentum 0.1: mostly the last 10-20 patches, from weights that
have since moved). This benchmark trains the bundle as the README does (``--time_limit_minutes 15``,
so the learning-rate schedule is the 15-minute one) for a few epochs, keeps the weights after every
epoch, and validates each epoch's weights with

- ``running``: the statistics as trained (what the bundle reported before it recomputed them
  itself: the training here runs with ``bn_recalibration_patches=0``);
- ``recomputed (plan mix)``: running statistics recomputed for the current weights from ``--patches``
  training patches drawn as training draws them (a third centred on foreground), as in "precise
  BN" (Wu & Johnson, 2021);
- ``recomputed (foreground)`` / ``recomputed (uniform)``: the same from patches all centred on
  foreground classes / on any voxel;
- ``tile statistics``: each validation tile normalised with its own statistics (training mode).

Only the statistics differ between the columns; the weights are the same. Prints a table of the
validation mean Dice per epoch and one JSON line.

    OMP_NUM_THREADS=1 python -m bench.bn_statistics --seed 1 --epochs 8
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import decollate_batch
from monai.metrics import DiceMetric
from monai.utils import set_determinism

from bench.measure import format_table
from bench.quality import ensure_demo_data
from unet_med.handlers.batch_norm import recompute_batch_norm_statistics

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "unet3d"
# (pos, neg) of each recomputed variant; None: the plan's own
SAMPLING = {"recomputed (plan mix)": None, "recomputed (foreground)": (1, 0), "recomputed (uniform)": (0, 1)}
PATCH_SEED = 12345


def _workflow(output_dir: Path, data: Path, seed: int, **override: Any) -> Any:
    from unet_med.bundle import UNetMedWorkflow

    return UNetMedWorkflow(
        config_file=str(BUNDLE / "configs" / "training.json"),
        meta_file=str(BUNDLE / "configs" / "metadata.json"),
        logging_file=str(BUNDLE / "configs" / "logging.conf"),
        bundle_root=str(BUNDLE),
        output_dir=str(output_dir),
        dataset_dir=str(data),
        time_limit_minutes=15,
        seed=seed,
        **override,
    )


def train(output_dir: Path, data: Path, seed: int, epochs: int) -> list[float]:
    """Train the bundle for ``epochs`` epochs, saving the weights after each as ``epoch<N>.pt``;
    the validation mean Dice the bundle reported per epoch."""
    from ignite.engine import Events

    # statistics as training leaves them: the bundle's own recalibration before validation off
    workflow = _workflow(output_dir, data, seed, bn_recalibration_patches=0)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    network = workflow.parser.get_parsed_content("network")
    reported: list[float] = []

    @evaluator.on(Events.COMPLETED)
    def _record(engine: Any) -> None:
        reported.append(float(engine.state.metrics["val_mean_dice"]))

    @trainer.on(Events.EPOCH_COMPLETED)
    def _save(engine: Any) -> None:
        torch.save(network.state_dict(), output_dir / f"epoch{engine.state.epoch}.pt")
        if engine.state.epoch >= epochs:
            engine.terminate()

    workflow.run()
    workflow.finalize()
    return reported


def training_patches(
    output_dir: Path, data: Path, seed: int, n: int, pos_neg: tuple[int, int] | None
) -> list:
    """``n`` training input patches drawn by the bundle's training chain (with ``pos``/``neg``
    replaced when given), the same ones on every call."""
    override = {} if pos_neg is None else {"pos": pos_neg[0], "neg": pos_neg[1]}
    loader = _workflow(output_dir, data, seed, **override).parser.get_parsed_content("train#dataloader")
    set_determinism(seed=PATCH_SEED)
    patches: list[torch.Tensor] = []
    while len(patches) < n:
        for batch in loader:
            patches.append(batch["image"])
            if len(patches) >= n:
                break
    return patches


def recomputed(network: torch.nn.Module, patches: Sequence[torch.Tensor]) -> torch.nn.Module:
    """A copy of ``network`` in eval mode with its batch-norm statistics recomputed from
    ``patches`` (:func:`~unet_med.handlers.batch_norm.recompute_batch_norm_statistics`)."""
    net = copy.deepcopy(network)
    recompute_batch_norm_statistics(net, patches)
    return net.eval()


def validation_dice(
    network: torch.nn.Module, batches: Sequence[dict], inferer: Any, post: Any, train_mode: bool
) -> float:
    """Mean Dice over the foreground classes and validation scans, as the bundle's evaluator
    computes ``val_mean_dice`` (``train_mode``: batch norm uses each tile's own statistics)."""
    network.train(train_mode)
    metric = DiceMetric(include_background=False, reduction="mean")
    with torch.no_grad():
        for batch in batches:
            batch = dict(batch)
            batch["pred"] = inferer(batch["image"], network)
            items = [post(item) for item in decollate_batch(batch)]
            metric(torch.stack([i["pred"] for i in items]), torch.stack([i["label"] for i in items]))
    network.eval()
    return float(metric.aggregate())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bn_statistics", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--patches", type=int, default=32, help="training patches per recomputation")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bn_statistics")
    parser.add_argument("--data", type=Path, default=REPO / "outputs" / "quality" / "data" / "demo3d")
    args = parser.parse_args(argv)
    ensure_demo_data("unet3d", 3, args.data)
    run_dir = (args.out / f"seed{args.seed}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    reported = train(run_dir, args.data.resolve(), args.seed, args.epochs)

    parser_ = _workflow(run_dir / "eval", args.data.resolve(), args.seed).parser
    network = parser_.get_parsed_content("network")
    inferer = parser_.get_parsed_content("validate#inferer")
    post = parser_.get_parsed_content("validate#postprocessing")
    val_batches = list(parser_.get_parsed_content("validate#dataloader"))
    pools = {
        name: training_patches(run_dir / "eval", args.data.resolve(), args.seed, args.patches, pos_neg)
        for name, pos_neg in SAMPLING.items()
    }
    rows = []
    for epoch in range(1, len(reported) + 1):
        network.load_state_dict(torch.load(run_dir / f"epoch{epoch}.pt", weights_only=True))
        row: dict[str, Any] = {"epoch": epoch, "reported": reported[epoch - 1]}
        row["running"] = validation_dice(network, val_batches, inferer, post, train_mode=False)
        for name, patches in pools.items():
            row[name] = validation_dice(recomputed(network, patches), val_batches, inferer, post, False)
        row["tile statistics"] = validation_dice(network, val_batches, inferer, post, train_mode=True)
        rows.append(row)
        print(
            f"epoch {epoch}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "epoch"), flush=True
        )
    columns = list(rows[0]) if rows else []
    shown = [{k: (f"{v:.3f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows]
    print(
        f"\n## validation mean Dice per epoch, bundles/unet3d demo data, seed {args.seed}, "
        f"{args.patches} patches per recomputation"
    )
    print(format_table(shown, columns))
    print(json.dumps({"seed": args.seed, "patches": args.patches, "epochs": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
