"""Where the time goes for one CT-sized scan: ``unet-med infer`` end to end, by stage; and today's
code against an earlier revision, side by side on the same scan.

One synthetic CT (default 512 x 512 x 120 voxels at 0.7 x 0.7 x 2.5 mm, written as a DICOM series so
that every output applies; ``--quick``: 128 x 128 x 40) is segmented by the 3D bundle
(``bundles/unet3d``, its inference.json as shipped: resampling to 1.5 x 1.5 x 2.5 mm, foreground
crop, CT window, the overlap-tile inferer) with QC picture and DICOM SEG. Each run is a fresh
``unet-med infer`` process; the stage seconds are the ones it writes into ``report.csv``
(``seconds_load`` ... ``seconds_write``, the QC picture's and the DICOM SEG's share of the write), so
the benchmark measures exactly what a site sees in its reports. ``write NIfTI`` is the write stage
less the QC picture and the DICOM SEG. ``process`` is the command's wall time, start-up (imports,
bundle and weights) included; ``peak_rss_gib`` the process's resident high-water mark (``VmHWM``).

Networks: without ``--checkpoint``, untrained (He-initialised) ``cicek3d`` networks saved as
checkpoints, once per width of ``--widths`` (time does not depend on the weights); with
``--checkpoint FILE``, a trained checkpoint with its ``network.json`` and ``plan.json`` beside it
(the plan's spacing and normalisation apply), e.g. one trained on the 3D demo data, which comes
from the same generator as the synthetic CT: the label maps then have a meaning, and each one's
Dice against the generator's label is reported.

``--baseline-rev REV`` materialises that git revision of this repository (``git archive``) in a
temporary folder and runs *its* ``unet-med infer`` (``python -m pipelines.cli`` with the folder
first on ``PYTHONPATH``, its own bundle folder) on the same scan and checkpoint, interleaved with
today's code: repeat ``r`` of both before repeat ``r + 1`` of either (``--repeats``), medians
reported. Printed: the stage table of both, the ratio baseline / current of scan and process
seconds, the share of voxels on which the two label maps agree, and each one's Dice.

Usage: ``.venv/bin/python -m bench.scan [--quick] [--widths 32 8] [--device cpu]
[--checkpoint FILE] [--baseline-rev REV] [--repeats N]``; prints the tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
TIMED = (*STAGES, "scan", "process", "peak_rss_gib")
# Runs the CLI module as `python -m` would and prints the process's VmHWM when it exits: the
# parent's ru_maxrss for children is not the child's own (Linux carries it over across exec).
_CHILD = (
    "import atexit, runpy, sys\n"
    "def _hwm():\n"
    "    for line in open('/proc/self/status'):\n"
    "        if line.startswith('VmHWM:'):\n"
    "            print('bench.scan VmHWM kB', line.split()[1], file=sys.stderr)\n"
    "atexit.register(_hwm)\n"
    "sys.argv = ['unet-med', *sys.argv[1:]]\n"
    "runpy.run_module('pipelines.cli', run_name='__main__')\n"
)


@dataclass(frozen=True)
class CodeTree:
    """A checkout whose ``unet-med infer`` is timed: ``name`` in the tables, ``root`` its folder."""

    name: str
    root: Path


@dataclass(frozen=True)
class SyntheticCT:
    """The benchmark scan: its DICOM input folder, the generator's label (uint8, the scan's voxel
    grid) and the RAS affine the series was written with."""

    inputs: Path
    label: Any
    affine: Any


def bundle_default_width() -> int:
    """``base_width`` of the 3D bundle's ``inference.json``."""
    import json

    return int(json.loads((BUNDLE / "configs" / "inference.json").read_text())["base_width"])


def write_synthetic_ct(folder: Path, shape: Sequence[int], seed: int = 0) -> SyntheticCT:
    """A CT-like volume (body, organ, lesion, spine; int16 HU) of ``shape`` as a DICOM series in
    ``folder/ct``, rotated 10 degrees about z like a real acquisition, with its label."""
    import numpy as np

    from unet_med.data.demo import demo_volume_3d, rotated_scan_affine
    from unet_med.dicom.synthetic import write_dicom_series

    volume, label = demo_volume_3d(np.random.default_rng(seed), tuple(int(s) for s in shape))
    affine = rotated_scan_affine(SPACING_MM, 10.0, (-180.0, -180.0, -150.0))
    write_dicom_series(volume.astype(np.int16), affine, folder / "ct", series_description="bench ct")
    return SyntheticCT(folder, label, affine)


def materialise_revision(rev: str, folder: Path) -> CodeTree:
    """The tracked files of git revision ``rev`` of this repository, extracted into ``folder``
    (``git archive``: the repository's worktrees and branches are left as they are)."""
    short = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", f"{rev}^{{commit}}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if short.returncode != 0:
        raise SystemExit(f"bench.scan: --baseline-rev {rev}: not a commit of {ROOT} ({short.stderr.strip()})")
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev], capture_output=True, check=True
    )
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return CodeTree(f"baseline {short.stdout.strip()}", folder)


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


def infer_once(
    tree: CodeTree, inputs: Path, out: Path, checkpoint: Path, device: str, width: int | None = None
) -> dict[str, Any]:
    """One ``unet-med infer`` process of ``tree``: its stage seconds, wall time and peak RSS.
    ``width`` sets ``base_width`` (untrained checkpoints); a trained one brings its network.json."""
    command = [
        sys.executable, "-c", _CHILD, "infer",
        "--bundle", str(tree.root / "bundles" / "unet3d"), "--checkpoint", str(checkpoint),
        "--input", str(inputs), "--output", str(out), "--device", device, "--dicom-seg", "--overwrite",
    ]  # fmt: skip
    if width is not None:
        command += ["--set", f"base_width={width}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree.root), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=tree.root, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        log = proc.stdout[-2000:] + proc.stderr[-3000:]
        raise RuntimeError(f"{tree.name}: unet-med infer failed:\n{log}")
    hwm = [line.split()[-1] for line in proc.stderr.splitlines() if line.startswith("bench.scan VmHWM kB")]
    rss = int(hwm[-1]) / 2**20 if hwm else math.nan
    return {**stage_seconds(out / "report.csv"), "process": wall, "peak_rss_gib": rss}


def label_map(out: Path) -> tuple[Any, Any]:
    """The one ``*_seg.nii.gz`` in ``out``: (uint8 array, RAS affine)."""
    import nibabel as nib
    import numpy as np

    (path,) = sorted(out.glob("*_seg.nii.gz"))
    image = nib.load(str(path))
    return np.asarray(image.dataobj, dtype=np.uint8), image.affine


def dice_per_label(prediction: Any, reference: Any, labels: Sequence[int]) -> dict[int, float]:
    """Dice of every label (1 when both lack it)."""
    import numpy as np

    result = {}
    for value in labels:
        a, b = prediction == value, reference == value
        total = int(a.sum()) + int(b.sum())
        result[value] = 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
    return result


def segmentation_figures(maps: Mapping[str, tuple[Any, Any]], ct: SyntheticCT) -> dict[str, Any]:
    """Voxel agreement between the first two label maps of ``maps`` ({tree name: (array, affine)})
    and the mean foreground Dice of each against the synthetic label (labels 1 and 2).

    Raises:
        RuntimeError: a label map that is not in the scan's grid (shape or affine).
    """
    import numpy as np

    figures: dict[str, Any] = {}
    for name, (array, affine) in maps.items():
        if array.shape != ct.label.shape or not np.allclose(affine, ct.affine, atol=1e-3):
            raise RuntimeError(
                f"{name}: label map {array.shape} with affine\n{affine}\nis not in the scan's grid "
                f"{ct.label.shape}\n{ct.affine}"
            )
        dice = dice_per_label(array, ct.label, (1, 2))
        mean = float(np.mean(list(dice.values())))
        figures[name] = {"dice_organ": dice[1], "dice_lesion": dice[2], "dice_mean": mean}
    names = list(maps)
    if len(names) == 2:
        first, second = maps[names[0]][0], maps[names[1]][0]
        figures["voxel_agreement"] = float(np.mean(first == second))
        figures["dice_difference"] = abs(figures[names[0]]["dice_mean"] - figures[names[1]]["dice_mean"])
    return figures


def _median_row(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in TIMED}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"a {'x'.join(map(str, QUICK_SHAPE))} scan")
    parser.add_argument(
        "--widths", type=int, nargs="+", default=None,
        help="base widths of untrained networks to time (default: the bundle's default width and 8, a CPU "
        "width; ignored with --checkpoint)",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--checkpoint", type=Path, default=None,
        help="trained weights (network.json and plan.json beside them) instead of untrained networks; "
        "adds Dice against the synthetic label",
    )  # fmt: skip
    parser.add_argument(
        "--baseline-rev", default=None, metavar="REV",
        help="also time this git revision's unet-med infer on the same scan, interleaved (e.g. ed69322)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per code tree and network")
    args = parser.parse_args(argv)
    shape = QUICK_SHAPE if args.quick else FULL_SHAPE
    machine = machine_description()
    print("machine:", machine, flush=True)

    import torch

    from unet_med.networks import create_unet

    rows: list[dict[str, Any]] = []
    figures: dict[str, Any] = {"scan_shape": "x".join(map(str, shape)), "device": args.device}
    with tempfile.TemporaryDirectory(prefix="unet-med-bench-scan-") as tmp:
        folder = Path(tmp)
        ct = write_synthetic_ct(folder / "scans", shape)
        trees = [CodeTree("current", ROOT)]
        if args.baseline_rev:
            trees.insert(0, materialise_revision(args.baseline_rev, folder / "baseline"))
        if args.checkpoint is not None:
            networks: list[tuple[str, Path, int | None]] = [("trained", args.checkpoint.resolve(), None)]
        else:
            networks = []
            for width in args.widths or [bundle_default_width(), 8]:
                checkpoint = folder / f"model_w{width}.pt"
                torch.save(create_unet("cicek3d", base_width=width, out_channels=3).state_dict(), checkpoint)
                networks.append((f"w{width}", checkpoint, width))
        for network, checkpoint, width in networks:
            runs: dict[str, list[dict[str, Any]]] = {tree.name: [] for tree in trees}
            maps = {}
            for repeat in range(args.repeats):
                for k, tree in enumerate(trees):
                    out = folder / f"out_{network}_{k}"
                    runs[tree.name].append(infer_once(tree, ct.inputs, out, checkpoint, args.device, width))
                    seconds = runs[tree.name][-1]["scan"]
                    print(f"  {network} {tree.name} repeat {repeat}: {seconds:.1f} s per scan", flush=True)
                    if repeat == 0:
                        maps[tree.name] = label_map(out)
            medians = {name: _median_row(r) for name, r in runs.items()}
            for name, values in medians.items():
                rows.append({"network": network, "code": name, **values})
                prefix = f"{network}_{'baseline' if name != 'current' else 'current'}"
                figures.update({f"{prefix}_{k}_s" if k != "peak_rss_gib" else f"{prefix}_{k}": v
                                for k, v in values.items()})  # fmt: skip
                figures[f"{prefix}_scan_s_repeats"] = [r["scan"] for r in runs[name]]
            if args.checkpoint is not None:
                seg = segmentation_figures(maps, ct)
                for name, values in seg.items():
                    if isinstance(values, dict):
                        tag = "baseline" if name != "current" else "current"
                        figures.update({f"{network}_{tag}_{k}": v for k, v in values.items()})
                    else:
                        figures[f"{network}_{name}"] = values
            if len(trees) == 2:
                base, cur = medians[trees[0].name], medians["current"]
                figures[f"{network}_scan_speedup"] = base["scan"] / cur["scan"]
                figures[f"{network}_process_speedup"] = base["process"] / cur["process"]
                rows.append({"network": network, "code": "ratio baseline/current",
                             **{k: base[k] / cur[k] if cur[k] else math.nan for k in TIMED}})  # fmt: skip
    columns = ["network", "code", *TIMED]
    repeats = f", median of {args.repeats} interleaved repeats" if args.repeats > 1 else ""
    print(f"one {'x'.join(map(str, shape))} CT scan (DICOM, {SPACING_MM} mm), seconds per stage{repeats}:")
    print(format_table(rows, columns))
    for key in sorted(k for k in figures if "agreement" in k or "dice" in k or "speedup" in k):
        print(f"  {key}: {figures[key]:.5g}")
    if args.baseline_rev:
        figures["baseline_rev"] = args.baseline_rev
    figures["repeats"] = args.repeats
    figures["load_avg_1min_at_start"] = machine["load_avg_1min_at_start"]
    figures["load_avg_1min_at_end"] = round(os.getloadavg()[0], 2)
    emit_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
