"""Inference levers side by side on one device: whole-volume prediction of one CT-like volume by
``OverlapTileInferer`` with each lever on (float32, cuDNN autotuning, channels-last windows,
bfloat16 and float16 autocast, ``torch.compile``), timed interleaved, each compared with the
float32 baseline: seconds, speedup, fraction of voxels with the same argmax, largest logit
difference and (on a GPU) peak GPU memory.

The network is the 3D bundle's architecture (``cicek3d``, ``--width``, ``--depth``); with
``--weights`` (a state dict, e.g. ``ours.pt`` kept by ``bench.inference --save-weights``) it is a
trained one, so the argmax agreement says how much a lever changes a real segmentation; without,
He-initialised weights (timing only: an untrained network's argmax is full of near-ties). The
volume comes from the 3D demo generator (HU windowed to [-200, 400] and scaled by 1/200, as in
``bench.inference``). Each case times the inferer call and the logits' copy to the CPU (what
``unet-med infer`` waits for); CUDA is synchronised before the clock stops.

Usage: ``python -m bench.levers [--device cuda] [--width 32] [--size 256 256 128] [--weights W]``;
prints the table, then one JSON line.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.measure import emit_figures, format_table, interleaved_seconds, machine_description

CLASSES = 3
HU_WINDOW = (-200.0, 400.0)
# lever name -> (inferer options, cudnn.benchmark, torch.compile); cuDNN options only on CUDA
LEVERS: dict[str, tuple[dict[str, Any], bool, bool]] = {
    "float32": ({}, False, False),
    "float32+cudnn_benchmark": ({}, True, False),
    "float32+channels_last": ({"channels_last": True}, True, False),
    "bfloat16": ({"precision": "bfloat16"}, True, False),
    "float16": ({"precision": "float16"}, True, False),
    "bfloat16+channels_last": ({"precision": "bfloat16", "channels_last": True}, True, False),
    "float16+channels_last": ({"precision": "float16", "channels_last": True}, True, False),
    "float16+channels_last+compile": ({"precision": "float16", "channels_last": True}, True, True),
}
CPU_LEVERS = ("float32", "float32+channels_last", "bfloat16")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def lever_case(
    name: str,
    network: torch.nn.Module,
    image: torch.Tensor,
    budget_mb: float | None,
    results: dict[str, torch.Tensor],
) -> Callable[[], None]:
    """A callable that predicts ``image`` with lever ``name`` and keeps its logits in ``results``."""
    from unet_med.inferers import OverlapTileInferer

    options, cudnn_benchmark, compiled = LEVERS[name]
    inferer = OverlapTileInferer(memory_budget_mb=budget_mb, **options)
    net: Any = torch.compile(network, dynamic=False) if compiled else network

    def run() -> None:
        torch.backends.cudnn.benchmark = cudnn_benchmark
        with torch.inference_mode():
            logits = inferer(image, net).cpu()
        _synchronize(image.device)
        results[name] = logits

    return run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--width", type=int, default=32, help="base width of cicek3d")
    parser.add_argument("--depth", type=int, default=None, help="poolings (default: cicek3d's 3)")
    parser.add_argument("--size", type=int, nargs=3, default=(256, 256, 128), help="volume (voxels)")
    parser.add_argument("--weights", type=Path, default=None, help="trained state dict of the network")
    parser.add_argument("--budget-mb", type=float, default=None, help="inferer budget (default: device's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--levers", nargs="*", default=None, help=f"subset of {list(LEVERS)}")
    args = parser.parse_args(argv)

    from unet_med.data.demo import demo_volume_3d
    from unet_med.networks import create_unet

    device = torch.device(args.device)
    names = args.levers or (list(LEVERS) if device.type == "cuda" else list(CPU_LEVERS))
    machine = machine_description()
    print("machine:", machine, flush=True)
    network = create_unet("cicek3d", base_width=args.width, out_channels=CLASSES, depth=args.depth)
    if args.weights:
        network.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    network.eval().to(device)
    hu, label = demo_volume_3d(np.random.default_rng(1), tuple(args.size))
    image = torch.from_numpy((np.clip(hu, *HU_WINDOW) / 200.0).astype(np.float32))[None, None].to(device)
    budget = args.budget_mb  # None: the inferer's default for the device

    results: dict[str, torch.Tensor] = {}
    cases = {name: lever_case(name, network, image, budget, results) for name in names}
    seconds = interleaved_seconds(cases, repeats=args.repeats, warmup=1)
    peaks: dict[str, float | None] = {}
    for name, run in cases.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        run()
        peaks[name] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None

    from unet_med.inferers import OverlapTileInferer

    plan = OverlapTileInferer(memory_budget_mb=budget).plan(args.size, network, sw_device=device)
    reference = results["float32"]
    ref_label = reference.argmax(1)
    rows = []
    for name in names:
        logits = results[name]
        rows.append(
            dict(
                lever=name,
                seconds=seconds[name],
                speedup=seconds["float32"] / seconds[name],
                argmax_agreement=float((logits.argmax(1) == ref_label).float().mean()),
                max_abs_logit_diff=float((logits - reference).abs().max()),
                peak_gpu_gib=peaks[name],
            )
        )
    print(
        f"\n{'x'.join(map(str, args.size))} volume, cicek3d width {args.width} depth "
        f"{network.spec.poolings}, {plan.num_tiles} tile(s) of {'x'.join(map(str, plan.input_tile))}, "
        f"{'trained' if args.weights else 'untrained'} weights, {device}"
    )
    print(format_table(rows))
    best = max(rows, key=lambda r: r["speedup"])
    emit_figures(
        {
            "device": str(device),
            "gpu": machine["gpu"],
            "size": "x".join(map(str, args.size)),
            "width": args.width,
            "depth": network.spec.poolings,
            "tiles": plan.num_tiles,
            "trained": bool(args.weights),
            **{f"seconds_{r['lever']}": r["seconds"] for r in rows},
            **{f"agreement_{r['lever']}": r["argmax_agreement"] for r in rows},
            "best_lever": best["lever"],
            "best_speedup": best["speedup"],
            "output_voxels_M": math.prod(args.size) / 1e6,
            "load_avg_1min_at_start": machine["load_avg_1min_at_start"],
        }
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())
