"""Where the time goes for one CT-sized scan: ``unet-med infer`` end to end, by stage.

One synthetic CT (default 512 x 512 x 120 voxels at 0.7 x 0.7 x 2.5 mm, written as a DICOM series so
that every output applies; ``--quick``: 128 x 128 x 40) is segmented by the 3D bundle
(``bundles/unet3d``, its inference.json as shipped: resampling to 1.5 x 1.5 x 2.5 mm, foreground
crop, CT window, the overlap-tile inferer) with QC picture and DICOM SEG, once per network width:
the bundle's default base width and a CPU width. Each run is a fresh ``unet-med infer`` process;
the stage seconds are the ones it writes into ``report.csv`` (``seconds_load`` ...
``seconds_write``, the QC picture's and the DICOM SEG's share of the write), so the benchmark
measures exactly what a site sees in its reports. ``write NIfTI`` is the write stage less the QC
picture and the DICOM SEG. ``process`` is the command's wall time, start-up (imports, bundle and
weights) included.

The weights are untrained (He-initialised) ``cicek3d`` networks saved as checkpoints: time does not
depend on the weights.

Usage: ``.venv/bin/python -m bench.scan [--quick] [--widths 32 8] [--device cpu]``; prints the
table, then one JSON line.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.measure import emit_figures, format_table, machine_description

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "unet3d"
FULL_SHAPE = (512, 512, 120)
QUICK_SHAPE = (128, 128, 40)
SPACING_MM = (0.7, 0.7, 2.5)
# stage name in the table -> how it comes out of a report row
STAGES = {
    "load": "seconds_load",
    "preprocess": "seconds_preprocess",
    "predict": "seconds_predict",
    "invert": "seconds_postprocess",
    "write_nifti": None,  # seconds_write - seconds_write_qc - seconds_write_dicom_seg
    "qc_picture": "seconds_write_qc",
    "dicom_seg": "seconds_write_dicom_seg",
}


def bundle_default_width() -> int:
    """``base_width`` of the 3D bundle's ``inference.json``."""
    import json

    return int(json.loads((BUNDLE / "configs" / "inference.json").read_text())["base_width"])


def write_synthetic_ct(folder: Path, shape: Sequence[int], seed: int = 0) -> Path:
    """A CT-like volume (body, organ, lesion, spine; int16 HU) of ``shape`` as a DICOM series in
    ``folder/ct``, rotated 10 degrees about z like a real acquisition; returns the input folder."""
    import numpy as np

    from unet_med.data.demo import demo_volume_3d, rotated_scan_affine
    from unet_med.dicom.synthetic import write_dicom_series

    volume, _ = demo_volume_3d(np.random.default_rng(seed), tuple(int(s) for s in shape))
    affine = rotated_scan_affine(SPACING_MM, 10.0, (-180.0, -180.0, -150.0))
    write_dicom_series(volume.astype(np.int16), affine, folder / "ct", series_description="bench ct")
    return folder


def stage_seconds(report_csv: Path) -> dict[str, float]:
    """The stage seconds of the one segmented scan in ``report_csv`` (table names of :data:`STAGES`)
    and ``scan`` (the row's ``seconds``)."""
    import pandas as pd

    frame = pd.read_csv(report_csv)
    ok = frame[frame["status"] == "ok"]
    if len(ok) != 1:
        raise RuntimeError(f"{report_csv}: expected one segmented scan, found {frame[['scan_id', 'status']]}")
    row = ok.iloc[0]
    stages = {name: float(row[column]) for name, column in STAGES.items() if column is not None}
    rtstruct = float(row.get("seconds_write_rtstruct", 0.0))  # not written by this benchmark
    stages["write_nifti"] = (
        float(row["seconds_write"]) - stages["qc_picture"] - stages["dicom_seg"]
        - (0.0 if math.isnan(rtstruct) else rtstruct)
    )
    stages["scan"] = float(row["seconds"])
    return stages


def time_width(inputs: Path, out: Path, width: int, device: str, checkpoint: Path) -> dict[str, Any]:
    """One ``unet-med infer`` process at ``width``: its stage seconds and wall time."""
    command = [
        sys.executable, "-m", "pipelines.cli", "infer",
        "--bundle", str(BUNDLE), "--checkpoint", str(checkpoint), "--set", f"base_width={width}",
        "--input", str(inputs), "--output", str(out), "--device", device, "--dicom-seg", "--overwrite",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        log = proc.stdout[-2000:] + proc.stderr[-3000:]
        raise RuntimeError(f"unet-med infer at width {width} failed:\n{log}")
    return {"width": width, **stage_seconds(out / "report.csv"), "process": wall}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"a {'x'.join(map(str, QUICK_SHAPE))} scan")
    parser.add_argument(
        "--widths", type=int, nargs="+", default=None,
        help="base widths to time (default: the bundle's default width and 8, a CPU width)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    args = parser.parse_args(argv)
    shape = QUICK_SHAPE if args.quick else FULL_SHAPE
    widths = args.widths or [bundle_default_width(), 8]
    machine = machine_description()
    print("machine:", machine, flush=True)

    import torch

    from unet_med.networks import create_unet

    rows = []
    with tempfile.TemporaryDirectory(prefix="unet-med-bench-scan-") as tmp:
        folder = Path(tmp)
        inputs = write_synthetic_ct(folder / "scans", shape)
        for width in widths:
            checkpoint = folder / f"model_w{width}.pt"
            torch.save(create_unet("cicek3d", base_width=width, out_channels=3).state_dict(), checkpoint)
            rows.append(time_width(inputs, folder / f"out_w{width}", width, args.device, checkpoint))
            print(f"  width {width}: {rows[-1]['scan']:.1f} s per scan", flush=True)
    columns = ["width", *STAGES, "scan", "process"]
    print(f"one {'x'.join(map(str, shape))} CT scan (DICOM, {SPACING_MM} mm), seconds per stage:")
    print(format_table(rows, columns))
    figures: dict[str, Any] = {"scan_shape": "x".join(map(str, shape)), "device": args.device}
    for row in rows:
        figures.update({f"w{row['width']}_{k}_s": row[k] for k in (*STAGES, "scan", "process")})
    figures["load_avg_1min_at_start"] = machine["load_avg_1min_at_start"]
    emit_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
