"""Timing, FLOP counting, peak memory and reporting shared by the benchmark scripts.

The machines these run on are shared and noisy, so cases that are compared are timed side by
side: :func:`interleaved_seconds` runs one repeat of every case before the next repeat of any, and
the scripts report ratios of medians as well as absolute seconds.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "interleaved_seconds",
    "count_flops",
    "matmul_gflops",
    "machine_description",
    "peak_rss_gib",
    "format_table",
    "emit_figures",
]


def interleaved_seconds(
    cases: Mapping[str, Callable[[], Any]], *, repeats: int = 3, warmup: int = 1
) -> dict[str, float]:
    """Median wall seconds of each case; repeat ``r`` of every case runs before repeat ``r + 1``
    of any, so that load from other processes hits all cases alike."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of ``fn`` as counted by ``torch.utils.flop_counter``
    (2 per multiply-add of convolutions and matrix products, forward and backward; element-wise
    operations such as activations and normalisation are not counted)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """Achieved GFLOP/s of an ``n x n`` float32 matrix product: the ceiling a convolution can hope
    for on this machine with the current thread setting."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)
    seconds = interleaved_seconds({"mm": lambda: torch.mm(a, b)}, repeats=repeats, warmup=1)["mm"]
    return 2.0 * n**3 / seconds / 1e9


def machine_description() -> dict[str, Any]:
    """What the figures were measured on: CPU, cores, threads, torch version, load average."""
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover - not on every platform
        load = (math.nan,) * 3
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg_1min_at_start": round(load[0], 2),
    }


def peak_rss_gib() -> float:
    """High-water mark of this process's resident memory in GiB (``VmHWM``; unlike ``ru_maxrss``
    it is not inherited from the parent across ``fork``/``exec``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:  # pragma: no cover - no /proc on this platform
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # pragma: no cover


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or math.isnan(value):
            return f"{value:g}"
        magnitude = abs(value)
        return f"{value:.3g}" if magnitude < 1000 else f"{value:.0f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A plain-text (Markdown pipe) table of ``rows``; floats get 3 significant digits."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in cells]
    return "\n".join(lines)


def emit_figures(figures: Mapping[str, Any]) -> None:
    """Print the figures as one JSON object on the last line of the output (floats rounded to 4
    significant digits)."""

    def rounded(v: Any) -> Any:
        if isinstance(v, float) and math.isfinite(v) and v != 0:
            return float(f"{v:.4g}")
        return v

    print(json.dumps({k: rounded(v) for k, v in figures.items()}), flush=True)
