"""Network benchmark: forward and training-step time, counted FLOPs and achieved GFLOP/s of the
unet-med presets against ``monai.networks.nets.BasicUNet`` at matched widths and tiles, 2D and 3D,
per step and per *output* voxel; the machine's matmul GFLOP/s as the ceiling; and the cost of
``valid`` against ``same`` padding, predicted from the margin arithmetic and measured.

Three sections:

* ``matched``: the paper's 5-level architecture (2 convs per level, 2x2 up-convolution halving the
  channels, batch norm, ReLU) with ``same`` padding against BasicUNet with the same widths
  ``(w, 2w, 4w, 8w, 16w, w)``, batch norm and ReLU, on the same tile. BasicUNet's top up-convolution
  does not halve the channels, so it does a few percent more work; FLOPs are counted for both.
* ``valid-vs-same``: the ``paper`` (2D) and ``cicek3d`` (3D) presets in their own ``valid`` padding
  and with ``padding="same"``; the same network runs on a tile as large as the valid network's
  input (so both work on feature maps of similar size), and cost is compared per output voxel.
  A valid network reads a margin of context around its output at every level, so per output
  voxel its feature maps are larger than the same network's. The predicted cost ratio is the
  ratio of counted FLOPs per output voxel (every convolution's work is its output voxels x c_in x
  c_out x k^d, so this is the margin arithmetic summed over levels, weighted by each level's
  channels); the measured one is the ratio of times per output voxel. The top level's share of
  it, input voxels read per output voxel, is reported too.
* ``presets``: every preset (paper, keras, vgg16, cicek3d) at the benchmark widths.
* ``--default-widths`` (a mode of its own): the two bundles' networks as they train, at the
  presets' widths on the presets' tiles (2D ``paper``, base width 64, 572^2; 3D ``cicek3d``, base
  width 32, 132x132x116) and at the widths, depths and tiles the CPU plan picks for each bundle's
  demo data (``unet_med.planning.make_plan``): achieved GFLOP/s of the forward pass and of the
  training step against the matmul ceiling (3 repeats after one warm-up: a width-32 3D training
  step takes about 30 s on one core here).

Usage: ``.venv/bin/python -m bench.network [--quick | --default-widths]``.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.networks.nets import BasicUNet
from torch import nn

from bench.measure import (
    count_flops,
    emit_figures,
    format_table,
    interleaved_seconds,
    machine_description,
    matmul_gflops,
)
from unet_med.networks import PRESETS, UNet, create_unet
from unet_med.networks.shapes import min_input_size

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"

COLUMNS = [
    "section",
    "model",
    "dims",
    "width",
    "padding",
    "input",
    "output",
    "params_M",
    "fwd_s",
    "train_s",
    "fwd_GFLOP",
    "train_GFLOP",
    "fwd_GFLOPs",
    "train_GFLOPs",
    "fwd_frac_matmul",
    "train_frac_matmul",
    "fwd_ns_per_out_vox",
    "train_ns_per_out_vox",
]


def matched_unet(dims: int, width: int) -> UNet:
    """The paper's architecture with same padding and batch norm, any dimensionality."""
    return UNet(
        dims,
        1,
        2,
        widths=tuple(width * 2**i for i in range(5)),
        padding="same",
        upsampling="transposed",
        norm="batch",
    )


def matched_basicunet(dims: int, width: int) -> BasicUNet:
    """MONAI's BasicUNet with the same widths, batch norm and ReLU."""
    return BasicUNet(
        spatial_dims=dims,
        in_channels=1,
        out_channels=2,
        features=(width, 2 * width, 4 * width, 8 * width, 16 * width, width),
        act=("relu", {"inplace": True}),
        norm=("batch", {"affine": True}),
        dropout=0.0,
    )


class Case:
    """One network on one tile: callables for a forward pass and a training step (forward,
    cross-entropy, backward, SGD step) plus their counted FLOPs."""

    def __init__(
        self,
        section: str,
        model: str,
        net: nn.Module,
        dims: int,
        width: int,
        padding: str,
        input_size: Sequence[int],
        output_size: Sequence[int],
    ) -> None:
        self.row: dict[str, Any] = dict(
            section=section,
            model=model,
            dims=dims,
            width=width,
            padding=padding,
            input="x".join(map(str, input_size)),
            output="x".join(map(str, output_size)),
            params_M=sum(p.numel() for p in net.parameters()) / 1e6,
        )
        self.net = net
        self.output_voxels = math.prod(output_size)
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(1, 1, *input_size, generator=generator)
        self.y = torch.randint(0, 2, (1, *output_size), generator=generator)
        self.optimizer = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.99)
        self.loss = nn.CrossEntropyLoss()

    def forward(self) -> None:
        self.net.eval()
        with torch.inference_mode():
            self.net(self.x)

    def train_step(self) -> None:
        self.net.train()
        self.optimizer.zero_grad(set_to_none=True)
        self.loss(self.net(self.x), self.y).backward()
        self.optimizer.step()

    def count(self) -> None:
        """Count FLOPs on a ``meta`` copy (shapes only, nothing is computed): the forward pass
        and forward + backward of the training step (the SGD update has no counted FLOPs)."""
        net = copy.deepcopy(self.net).to("meta")
        x, y = self.x.to("meta"), self.y.to("meta")
        with torch.inference_mode():
            self.fwd_flops = count_flops(lambda: net.eval()(x))
        self.train_flops = count_flops(lambda: self.loss(net.train()(x), y).backward())

    def finish(self, fwd_s: float, train_s: float, ceiling: float) -> dict[str, Any]:
        row = self.row
        row.update(
            fwd_s=fwd_s,
            train_s=train_s,
            fwd_GFLOP=self.fwd_flops / 1e9,
            train_GFLOP=self.train_flops / 1e9,
            fwd_GFLOPs=self.fwd_flops / fwd_s / 1e9,
            train_GFLOPs=self.train_flops / train_s / 1e9,
            fwd_ns_per_out_vox=fwd_s / self.output_voxels * 1e9,
            train_ns_per_out_vox=train_s / self.output_voxels * 1e9,
        )
        row["fwd_frac_matmul"] = row["fwd_GFLOPs"] / ceiling
        row["train_frac_matmul"] = row["train_GFLOPs"] / ceiling
        return row


def _same_tile(size: int, dims: int) -> tuple[int, ...]:
    return (size,) * dims


def valid_and_same_tiles(
    valid: UNet, output_tile: int, dims: int
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(valid input, valid output, same tile) for a valid network and a wanted output tile.

    The same-padding tile is the valid *input* rounded up to the pooling grid, so both networks
    run on feature maps of about the same size (and so at about the same efficiency); the cost is
    then compared per output voxel.
    """
    in_valid = min_input_size(_same_tile(output_tile, dims), valid.spec)
    out_valid = valid.output_size(in_valid)
    grid = 2**valid.spec.poolings
    same = tuple(-(-s // grid) * grid for s in in_valid)
    return in_valid, out_valid, same


def build_cases(quick: bool) -> list[Case]:
    """The benchmark's cases; ``quick`` uses smaller widths and tiles."""
    cases: list[Case] = []
    if quick:
        matched = ((2, (8, 16), 128), (3, (4, 8), 32))
        valid_same = (("paper", 2, 8, 132), ("cicek3d", 3, 4, 20))
    else:
        matched = ((2, (16, 32, 64), 256), (3, (8, 16), 64))
        valid_same = (("paper", 2, 16, 132), ("cicek3d", 3, 8, 20))
    for dims, widths, tile in matched:
        size = _same_tile(tile, dims)
        for w in widths:
            cases.append(Case("matched", "unet-med", matched_unet(dims, w), dims, w, "same", size, size))
            cases.append(
                Case("matched", "BasicUNet", matched_basicunet(dims, w), dims, w, "same", size, size)
            )
    for preset, dims, w, tile in valid_same:
        valid = create_unet(preset, base_width=w, dropout=0.0)
        in_valid, out_valid, same_tile = valid_and_same_tiles(valid, tile, dims)
        cases.append(Case("valid-vs-same", preset, valid, dims, w, "valid", in_valid, out_valid))
        same = create_unet(preset, base_width=w, dropout=0.0, padding="same")
        cases.append(Case("valid-vs-same", preset, same, dims, w, "same", same_tile, same_tile))
    if not quick:
        for preset, tile in (("keras", 256), ("vgg16", 256)):
            net = create_unet(preset, base_width=16, dropout=0.0)
            cases.append(Case("presets", preset, net, 2, 16, "same", (tile, tile), (tile, tile)))
    return cases


def cpu_plans(folder: Path) -> dict[str, dict[str, Any]]:
    """The CPU plan of each bundle for its own demo dataset (``demo_n`` scans of ``demo_size``
    from its ``training.json``), as a training started with only ``--manifest`` makes it."""
    import json

    from unet_med.data.demo import generate_demo_dataset
    from unet_med.planning import dataset_fingerprint, make_plan

    plans = {}
    for bundle in ("unet2d_paper", "unet3d"):
        config = json.loads((BUNDLES / bundle / "configs" / "training.json").read_text())
        dims = int(config["spatial_dims"])
        manifest = generate_demo_dataset(
            folder / bundle, dims=dims, n=int(config["demo_n"]), size=int(config["demo_size"]), seed=0
        )
        fingerprint = dataset_fingerprint(manifest, progress=False)
        plans[bundle] = make_plan(fingerprint, bundle=bundle, device="cpu")
    return plans


def default_width_cases(plans: dict[str, dict[str, Any]]) -> list[Case]:
    """The bundles' networks as they train (the preset's normalisation and dropout): at the
    presets' widths on the presets' tiles, then as the CPU ``plans`` size them."""
    cases: list[Case] = []
    for preset in ("paper", "cicek3d"):
        spec = PRESETS[preset]
        net = create_unet(preset, out_channels=spec.paper_out_channels)
        size = spec.paper_input_size
        cases.append(
            Case(
                "preset width",
                preset,
                net,
                spec.spatial_dims,
                spec.base_width,
                "valid",
                size,
                net.output_size(size),
            )
        )
    for plan in plans.values():
        preset = plan["_planned_with_"]["preset"]
        net = create_unet(
            preset,
            in_channels=plan["_planned_with_"]["channels"],
            out_channels=plan["num_classes"],
            base_width=plan["base_width"],
            depth=plan["depth"],
            norm=plan["norm"],
        )
        size = tuple(plan["_planned_with_"]["input_patch_size"])
        model = f"{preset} d{plan['depth']}"
        cases.append(
            Case(
                "CPU plan",
                model,
                net,
                len(size),
                plan["base_width"],
                "valid",
                size,
                tuple(plan["patch_size"]),
            )
        )
    return cases


def run_default_widths(repeats: int) -> int:
    """``--default-widths``: achieved GFLOP/s at the bundles' default widths against the matmul
    ceiling, forward and training step; every case and the ceiling's matrix product are timed
    side by side (one warm-up round, median of ``repeats``)."""
    import tempfile

    from bench.measure import peak_rss_gib

    machine = machine_description()
    print("machine:", machine, flush=True)
    with tempfile.TemporaryDirectory(prefix="unet-med-bench-") as tmp:
        plans = cpu_plans(Path(tmp))
    cases = default_width_cases(plans)
    # the ceiling is timed in the same rounds as the networks (a minute apart, load changes)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    timed = {"mm": lambda: torch.mm(a, b)}
    for i, case in enumerate(cases):
        case.count()
        timed[f"{i}.fwd"] = case.forward
        timed[f"{i}.train"] = case.train_step
    seconds = interleaved_seconds(timed, repeats=repeats, warmup=1)
    ceiling = 2.0 * n**3 / seconds["mm"] / 1e9
    print(
        f"matmul ceiling: {ceiling:.1f} GFLOP/s (float32 {n}^2, {machine['torch_threads']} threads)",
        flush=True,
    )
    rows = [case.finish(seconds[f"{i}.fwd"], seconds[f"{i}.train"], ceiling) for i, case in enumerate(cases)]
    print(format_table(rows, COLUMNS), flush=True)
    figures: dict[str, Any] = {"matmul_gflops": ceiling, "repeats": repeats, "default_widths": True}
    for row in rows:
        tag = f"{row['dims']}d_{'preset' if row['section'] == 'preset width' else 'cpu_plan'}_w{row['width']}"
        for key in ("fwd_GFLOPs", "train_GFLOPs", "fwd_frac_matmul", "train_frac_matmul", "train_s", "fwd_s"):
            figures[f"{key}_{tag}"] = row[key]
    figures["peak_rss_gib"] = peak_rss_gib()
    figures["torch_threads"] = machine["torch_threads"]
    figures["load_avg_1min_at_start"] = machine["load_avg_1min_at_start"]
    figures["load_avg_1min_at_end"] = round(os.getloadavg()[0], 2)
    emit_figures(figures)
    return 0


def _voxels(size: str) -> int:
    return math.prod(int(s) for s in size.split("x"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small widths and tiles (about 2 minutes)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (median)")
    parser.add_argument(
        "--default-widths",
        action="store_true",
        help="GFLOP/s at the bundles' preset widths and tiles and at the CPU plan's (~5 min on 1 thread)",
    )
    args = parser.parse_args(argv)
    if args.default_widths:
        return run_default_widths(args.repeats or 3)
    repeats = args.repeats or (3 if args.quick else 5)
    torch.manual_seed(0)

    machine = machine_description()
    print("machine:", machine, flush=True)
    ceiling = matmul_gflops(1024 if args.quick else 2048)
    print(f"matmul ceiling: {ceiling:.1f} GFLOP/s (float32, {machine['torch_threads']} threads)", flush=True)

    cases = build_cases(args.quick)
    for case in cases:
        case.count()
    # every case's forward and training step in one interleaved loop, so load hits all alike
    timed = {}
    for i, case in enumerate(cases):
        timed[f"{i}.fwd"] = case.forward
        timed[f"{i}.train"] = case.train_step
    seconds = interleaved_seconds(timed, repeats=repeats, warmup=1)
    rows = [case.finish(seconds[f"{i}.fwd"], seconds[f"{i}.train"], ceiling) for i, case in enumerate(cases)]
    print(format_table(rows, COLUMNS), flush=True)

    figures: dict[str, Any] = {"matmul_gflops": ceiling, "repeats": repeats, "quick": args.quick}
    by_key = {(r["section"], r["model"], r["dims"], r["width"], r["padding"]): r for r in rows}
    for (section, model, dims, width, padding), row in by_key.items():
        if section == "matched" and model == "unet-med":
            ref = by_key[(section, "BasicUNet", dims, width, padding)]
            tag = f"{dims}d_w{width}"
            figures[f"train_per_out_voxel_vs_basicunet_{tag}"] = (
                row["train_ns_per_out_vox"] / ref["train_ns_per_out_vox"]
            )
            figures[f"fwd_per_out_voxel_vs_basicunet_{tag}"] = (
                row["fwd_ns_per_out_vox"] / ref["fwd_ns_per_out_vox"]
            )
            figures[f"train_flops_vs_basicunet_{tag}"] = row["train_GFLOP"] / ref["train_GFLOP"]
            figures[f"train_frac_matmul_unet_med_{tag}"] = row["train_frac_matmul"]
            figures[f"train_frac_matmul_basicunet_{tag}"] = ref["train_frac_matmul"]
        if section == "valid-vs-same" and padding == "valid":
            same = by_key[(section, model, dims, width, "same")]
            tag = f"{model}_{dims}d_w{width}"
            fv = row["train_GFLOP"] / _voxels(row["output"])
            fs = same["train_GFLOP"] / _voxels(same["output"])
            figures[f"valid_same_predicted_cost_ratio_{tag}"] = fv / fs
            figures[f"valid_same_input_read_per_output_voxel_{tag}"] = _voxels(row["input"]) / _voxels(
                row["output"]
            )
            figures[f"valid_same_measured_train_ratio_{tag}"] = (
                row["train_ns_per_out_vox"] / same["train_ns_per_out_vox"]
            )
            figures[f"valid_same_measured_fwd_ratio_{tag}"] = (
                row["fwd_ns_per_out_vox"] / same["fwd_ns_per_out_vox"]
            )
    figures["load_avg_1min_at_start"] = machine["load_avg_1min_at_start"]
    emit_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
