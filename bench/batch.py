"""Batch inference benchmark: scans per minute and peak memory of ``unet-med infer`` (the 3D bundle)
over a folder of demo CT scans, with the background loader (the command as shipped: the next scan
is loaded and preprocessed on a worker thread while the current one is predicted) and without it.

"Without" runs the same command in a process where ``concurrent.futures.ThreadPoolExecutor`` is
replaced by :class:`SerialExecutor`, which runs each submitted load at once in the calling thread;
everything else is the same code. That process also times ``BatchSegmenter.prepare`` (load + preprocessing)
to report the share of the serial run spent loading, which bounds what overlapping can gain:
``1 / (1 - share)``. Every run is a fresh subprocess (peak RSS = its ``VmHWM``); the two modes
alternate over ``--repeats``.

The network is the bundle's ``cicek3d`` at ``--width`` with untrained (He-initialised) weights saved
as a checkpoint: speed and memory do not depend on the weights.

Usage: ``.venv/bin/python -m bench.batch [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from bench.measure import emit_figures, format_table, machine_description, peak_rss_gib

ROOT = Path(__file__).resolve().parents[1]


class SerialExecutor:
    """A stand-in for ``ThreadPoolExecutor`` that runs every task when it is submitted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def submit(self, fn: Callable, *args: Any, **kwargs: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # delivered by .result(), as a thread pool would
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True) -> None:
        return None


def run_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run ``unet-med infer`` in this process, with or without the background loader."""
    import concurrent.futures

    from pipelines.cli import main as cli_main
    from unet_med.inference import BatchSegmenter

    load_s = [0.0]
    if not cfg["background"]:
        concurrent.futures.ThreadPoolExecutor = SerialExecutor  # type: ignore[misc, assignment]
        prepare = BatchSegmenter.prepare

        def timed_prepare(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return prepare(*args, **kwargs)
            finally:
                load_s[0] += time.perf_counter() - t0

        BatchSegmenter.prepare = timed_prepare  # type: ignore[method-assign]
    argv = [
        "infer",
        "--bundle", str(ROOT / "bundles" / "unet3d"),
        "--input", cfg["input"],
        "--output", cfg["output"],
        "--checkpoint", cfg["checkpoint"],
        "--device", "cpu",
        "--no-qc",
        "--overwrite",
        "--set", f"base_width={cfg['width']}",
    ]  # fmt: skip
    start = time.perf_counter()
    code = cli_main(argv)
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"unet-med infer exited with {code}")
    return dict(
        wall_s=wall, peak_rss_gib=peak_rss_gib(), load_s=load_s[0] if not cfg["background"] else None
    )


def _in_child(cfg: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.batch", "--child", json.dumps(cfg)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"batch run {cfg} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer, smaller scans")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--scans", type=int, default=None, help="demo scans in the folder")
    parser.add_argument("--size", type=int, default=None, help="demo scan size (voxels, x and y; z = 0.7 x)")
    parser.add_argument("--width", type=int, default=None, help="base width of the bundle's network")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(json.loads(args.child))), flush=True)
        return 0
    n = args.scans or (4 if args.quick else 10)
    size = args.size or (64 if args.quick else 128)
    width = args.width or (4 if args.quick else 8)
    repeats = args.repeats or (1 if args.quick else 2)
    machine = machine_description()
    print("machine:", machine, flush=True)

    import torch

    from unet_med.data.demo import generate_demo_dataset
    from unet_med.networks import create_unet

    with tempfile.TemporaryDirectory(prefix="unet-med-bench-") as tmp:
        folder = Path(tmp)
        manifest = generate_demo_dataset(folder / "demo", dims=3, n=n, size=size, format="nifti", seed=0)
        images = manifest.parent / "images"
        checkpoint = folder / "model.pt"
        torch.save(
            {"network": create_unet("cicek3d", base_width=width, out_channels=3).state_dict()}, checkpoint
        )
        runs: dict[str, list[dict[str, Any]]] = {"background loader": [], "serial": []}
        for r in range(repeats):
            for mode in runs:
                cfg = dict(
                    input=str(images),
                    output=str(folder / f"out-{r}-{mode.replace(' ', '-')}"),
                    checkpoint=str(checkpoint),
                    width=width,
                    background=mode == "background loader",
                )
                runs[mode].append(_in_child(cfg))
                print(f"  {mode}: {runs[mode][-1]['wall_s']:.1f} s", flush=True)

    rows = []
    for mode, results in runs.items():
        wall = statistics.median(r["wall_s"] for r in results)
        row = dict(
            mode=mode,
            scans=n,
            scan_size=f"{size}x{size}x{int(round(0.7 * size))}",
            wall_s=wall,
            scans_per_min=n / wall * 60,
            peak_rss_gib=max(r["peak_rss_gib"] for r in results),
        )
        if mode == "serial":
            row["load_share"] = statistics.median(r["load_s"] / r["wall_s"] for r in results)
        rows.append(row)
    print(
        format_table(
            rows, ["mode", "scans", "scan_size", "wall_s", "scans_per_min", "peak_rss_gib", "load_share"]
        )
    )
    bg, serial = rows
    figures = {
        "scans": n,
        "scan_size": bg["scan_size"],
        "width": width,
        "scans_per_min_background": bg["scans_per_min"],
        "scans_per_min_serial": serial["scans_per_min"],
        "background_speedup": bg["scans_per_min"] / serial["scans_per_min"],
        "serial_load_share": serial["load_share"],
        "max_speedup_from_overlap": 1.0 / (1.0 - serial["load_share"]),
        "peak_rss_gib_background": bg["peak_rss_gib"],
        "peak_rss_gib_serial": serial["peak_rss_gib"],
        "load_avg_1min_at_start": machine["load_avg_1min_at_start"],
    }
    emit_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
