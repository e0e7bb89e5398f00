"""Model quality benchmarks of issue 11: the README's commands, run as a user runs them, and the
Dice they give.

Every figure comes from the documented command lines run as subprocesses (``python -m monai.bundle
run training --workflow_name unet_med.bundle.UNetMedWorkflow ...``, ``unet-med plan``, ``unet-med
infer --reference``), not from library shortcuts: the point is that the README's commands give the
figure. Per-epoch validation Dice is read from each run's MLflow run (``<run>/mlflow_run.json``), test
Dice from ``report.csv`` of ``unet-med infer --reference M.csv --split test``.

Sections (``--section``, default ``all`` in this order):

- ``demo2d``: the ``make demo`` training (its ``DEMO_TRAIN_ARGS`` read from the Makefile) over
  ``--seeds``; target: final validation mean Dice >= 0.90 and no epoch after the first 2 below 0.5.
- ``mr`` and ``ct_aniso`` (run side by side): a generated dataset unlike the demo
  (:mod:`bench.datasets`), ``unet-med plan`` checked for the expected normalisation and spacing
  rule, then the default training ``--manifest M.csv --time_limit_minutes T`` and test Dice per class.
- ``ensemble``: 3-fold cross-validation (``--fold K --num_folds 3``) on the 2D demo data with the
  demo recipe; test Dice of each fold's model and of the 3-model ensemble.
- ``demo3d``: ``bundles/unet3d`` on its demo data with ``--time_limit_minutes`` for ``--seeds-3d``
  (default 0 1).

Trainings run ``--parallel`` at a time (default 2) with ``OMP_NUM_THREADS=1`` each (on the 2-core
CPU this was faster overall than one at a time with 2 threads). The script prints a table per
section, writes/updates ``docs/quality_results.json`` (sections of earlier runs that were not
re-run are kept) and ends with one JSON line of all figures.

    python -m bench.quality --section all --seeds 0 1 2 3 4 --out outputs/quality
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import format_table

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("demo2d", "mr", "ct_aniso", "ensemble", "demo3d")
RESULTS_FILE = REPO / "docs" / "quality_results.json"
TARGET_FINAL_DICE_2D = 0.90
TARGET_FINAL_DICE_3D = 0.85
TARGET_MIN_DICE_AFTER = 0.5
WARMUP_EPOCHS = 2  # "no epoch after the first 2 below 0.5"
WORKFLOW = "unet_med.bundle.UNetMedWorkflow"
# What `unet-med plan` must choose for the generated datasets.
EXPECTED_PLAN = {
    "mr": {
        "normalization": "zscore_foreground",
        "spacing": [1.0, 1.0, 1.0],
        "spacing_rule": "isotropic rule",
    },
    "ct_aniso": {
        "normalization": "ct_dataset",
        "spacing": [0.7, 0.7, 5.0],
        "spacing_rule": "anisotropic data",
    },
}


# ------------------------------------------------------------------------------------ commands
def unet_med_exe() -> str:
    """The ``unet-med`` console script of the running interpreter's environment."""
    exe = Path(sys.executable).parent / "unet-med"
    return str(exe) if exe.exists() else "unet-med"


def training_command(
    bundle: str,
    output_dir: Path,
    *,
    data: Sequence[str],
    extra: Sequence[str] = (),
    logging_file: bool = True,
) -> list[str]:
    """The README's training command for ``bundles/<bundle>`` writing to ``output_dir``.

    Args:
        data: ``["--dataset_dir", DIR]`` (demo data) or ``["--manifest", CSV]``.
        extra: further ``--id value`` overrides (seed, epochs, time limit, ...).
    """
    root = f"bundles/{bundle}"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--workflow_name",
        WORKFLOW,
        "--meta_file",
        f"{root}/configs/metadata.json",
        "--config_file",
        f"{root}/configs/training.json",
        "--bundle_root",
        root,
    ]
    if logging_file:
        cmd += ["--logging_file", f"{root}/configs/logging.conf"]
    return cmd + ["--output_dir", str(output_dir), *data, *extra]


def infer_command(
    bundle: str, checkpoints: Sequence[Path], images: Path, output: Path, manifest: Path
) -> list[str]:
    """``unet-med infer`` of the test split with Dice against the manifest's labels (one
    ``--checkpoint`` per ensemble member)."""
    cmd = [unet_med_exe(), "infer", "--bundle", f"bundles/{bundle}"]
    for ckpt in checkpoints:
        cmd += ["--checkpoint", str(ckpt)]
    return cmd + [
        "--input",
        str(images),
        "--output",
        str(output),
        "--reference",
        str(manifest),
        "--split",
        "test",
        "--overwrite",
        "--no-qc",
    ]


def makefile_demo_args(makefile: Path = REPO / "Makefile") -> list[str]:
    """``DEMO_TRAIN_ARGS`` of the Makefile with its ``$(VAR)`` references expanded (simple
    ``NAME ?= value`` / ``:=`` / ``=`` assignments only), as the ``make demo`` training passes them."""
    variables: dict[str, str] = {}
    for line in makefile.read_text().splitlines():
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*(\?=|:=|=)\s*(.*)$", line)
        if m and not line.startswith("\t"):
            variables.setdefault(m.group(1), m.group(3).strip())

    def expand(text: str, depth: int = 0) -> str:
        if depth > 10:
            raise ValueError(f"{makefile}: recursive variable in {text!r}")
        return re.sub(
            r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
            lambda m: expand(variables.get(m.group(1), ""), depth + 1),
            text,
        )

    if "DEMO_TRAIN_ARGS" not in variables:
        raise ValueError(f"{makefile}: no DEMO_TRAIN_ARGS assignment found")
    return shlex.split(expand(variables["DEMO_TRAIN_ARGS"]))


def demo_data_settings(bundle: str) -> dict[str, int]:
    """The bundle's ``demo_n``, ``demo_size``, ``demo_seed`` (what its first use generates)."""
    config = json.loads((REPO / "bundles" / bundle / "configs" / "training.json").read_text())
    return {"n": int(config["demo_n"]), "size": int(config["demo_size"]), "seed": int(config["demo_seed"])}


def ensure_demo_data(bundle: str, dims: int, directory: Path) -> Path:
    """Generate the bundle's demo dataset into ``directory`` once (as the bundle's first use would,
    with its ``demo_*`` settings), so parallel trainings share it without racing; the manifest path."""
    from unet_med.data.demo import generate_demo_dataset

    manifest = directory / "manifest.csv"
    if not manifest.is_file():
        generate_demo_dataset(directory, dims=dims, **demo_data_settings(bundle))
    return manifest


# ------------------------------------------------------------------------------------ running
@dataclass
class Job:
    """One subprocess: its command, log file and, after running, exit code and wall seconds."""

    name: str
    cmd: list[str]
    log: Path
    returncode: int | None = None
    seconds: float = math.nan
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def command_text(self) -> str:
        return shlex.join(self.cmd)

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def run_jobs(jobs: Sequence[Job], parallel: int, *, threads: int = 1) -> None:
    """Run ``jobs`` ``parallel`` at a time (each with ``threads`` OpenMP/MKL threads), recording
    exit codes and wall seconds; stdout and stderr go to each job's log file."""
    pending = list(jobs)
    running: list[tuple[Job, subprocess.Popen, float, Any]] = []
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            job.log.parent.mkdir(parents=True, exist_ok=True)
            env = dict(
                os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **job.extra_env
            )
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
            fh = open(job.log, "w")
            fh.write(f"$ {job.command_text}\n")
            fh.flush()
            print(f"[{time.strftime('%H:%M:%S')}] start {job.name}: {job.command_text}", flush=True)
            proc = subprocess.Popen(job.cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)
            running.append((job, proc, time.perf_counter(), fh))
        time.sleep(1.0)
        for entry in list(running):
            job, proc, start, fh = entry
            if proc.poll() is not None:
                job.returncode, job.seconds = proc.returncode, time.perf_counter() - start
                fh.close()
                running.remove(entry)
                state = "ok" if job.returncode == 0 else f"FAILED rc={job.returncode} (log {job.log})"
                print(
                    f"[{time.strftime('%H:%M:%S')}] done {job.name} in {job.seconds / 60:.1f} min: {state}",
                    flush=True,
                )
                if job.returncode != 0:
                    print(job.tail(), flush=True)


def job_record(job: Job) -> dict[str, Any]:
    """What the results file keeps of a job."""
    record: dict[str, Any] = {
        "command": job.command_text,
        "log": str(job.log),
        "returncode": job.returncode,
        "wall_s": None if math.isnan(job.seconds) else round(job.seconds, 1),
    }
    if job.returncode not in (0, None):
        record["log_tail"] = job.tail(40)
    return record


# ------------------------------------------------------------------------------------ reading
def training_history(output_dir: Path) -> dict[str, Any]:
    """Per-epoch ``val_mean_dice`` (and per class) of the training run recorded in
    ``output_dir/mlflow_run.json`` (its store and run id; runs of all output folders share the
    working folder's store), with the run's status and stop reason tags."""
    from mlflow.tracking import MlflowClient

    from unet_med.tracking.run_record import read_run_record

    record = read_run_record(output_dir)
    if record is None:
        return {"error": f"{output_dir / 'mlflow_run.json'} not found"}
    client = MlflowClient(tracking_uri=record.tracking_uri)
    run = client.get_run(record.run_id)
    if "val_mean_dice" not in run.data.metrics:
        return {"error": f"run {record.run_id} in {record.tracking_uri} has no val_mean_dice"}
    history = sorted(client.get_metric_history(run.info.run_id, "val_mean_dice"), key=lambda m: m.step)
    per_class = {
        key.removeprefix("val_dice_"): [
            m.value for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)
        ]
        for key in run.data.metrics
        if key.startswith("val_dice_")
    }
    tags = {
        k: v for k, v in run.data.tags.items() if k.startswith("unet_med") or "stop" in k or "reason" in k
    }
    return {
        "run_id": run.info.run_id,
        "status": run.info.status,
        "epochs": [int(m.step) for m in history],
        "val_mean_dice": [float(m.value) for m in history],
        "val_dice_per_class": per_class,
        "best_val_mean_dice": run.data.metrics.get("best_val_mean_dice"),
        "tags": tags,
    }


def test_dice(report_csv: Path) -> dict[str, Any]:
    """Mean ``dice_<label>`` over the scans of an infer ``report.csv`` (NaN cells, where both maps
    lack the class, left out), their mean, and the scan count."""
    import pandas as pd

    if not report_csv.is_file():
        return {"error": f"{report_csv} not found"}
    frame = pd.read_csv(report_csv)
    columns = [c for c in frame.columns if c.startswith("dice_")]
    per_class = {c.removeprefix("dice_"): float(frame[c].mean()) for c in columns}
    finite = [v for v in per_class.values() if not math.isnan(v)]
    return {
        "scans": int(len(frame)),
        "failed": int((frame.get("status", pd.Series(dtype=str)) == "failed").sum()),
        "dice_per_class": per_class,
        "mean_dice": statistics.fmean(finite) if finite else math.nan,
    }


def plan_summary(plan_path: Path, expected: Mapping[str, Any]) -> dict[str, Any]:
    """The plan's chosen normalisation/spacing/patch/batch/iterations and whether the
    normalisation and spacing are the expected ones."""
    plan = json.loads(plan_path.read_text())
    comments = plan.get("_comments_", {})
    spacing_ok = len(plan["spacing"]) == len(expected["spacing"]) and all(
        math.isclose(a, b, rel_tol=0.02) for a, b in zip(plan["spacing"], expected["spacing"])
    )
    rule_ok = expected["spacing_rule"] in comments.get("spacing", "")
    return {
        "normalization": plan["normalization"],
        "normalization_ok": plan["normalization"] == expected["normalization"],
        "spacing": plan["spacing"],
        "spacing_ok": spacing_ok and rule_ok,
        "spacing_comment": comments.get("spacing"),
        "normalization_comment": comments.get("normalization"),
        "modality": plan.get("_planned_with_", {}).get("modality"),
        "modality_source": plan.get("_planned_with_", {}).get("modality_source"),
        "patch_size": plan["patch_size"],
        "batch_size": plan["batch_size"],
        "base_width": plan.get("base_width"),
        "iterations_per_epoch": plan["iterations_per_epoch"],
        "val_interval": plan["val_interval"],
        "estimated_step_s": plan.get("_planned_with_", {}).get("estimated_step_s"),
        "median_shape": plan.get("_planned_with_", {}).get("median_shape"),
    }


def stability(values: Sequence[float], target_final: float) -> dict[str, Any]:
    """Final Dice, minimum after the warm-up epochs, and the pass/fail of the stability target."""
    if not values:
        return {"final": None, "min_after_warmup": None, "pass": False}
    after = list(values[WARMUP_EPOCHS:])
    low = min(after) if after else None
    return {
        "final": values[-1],
        "min_after_warmup": low,
        "pass": bool(values[-1] >= target_final and (low is None or low >= TARGET_MIN_DICE_AFTER)),
    }


def _f(value: Any) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def _table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A table of ``rows`` with the union of their columns (rows may name different classes)."""
    columns = list(dict.fromkeys(c for row in rows for c in row))
    return format_table(rows, columns)


def _curve(values: Sequence[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)


# ------------------------------------------------------------------------------------ sections
@dataclass
class Context:
    out: Path
    seeds: list[int]
    time_limit: float
    time_limit_3d: float
    parallel: int
    seeds_3d: list[int] = field(default_factory=lambda: [0, 1])


def section_demo2d(ctx: Context) -> dict[str, Any]:
    """``make demo``'s training over the seeds; per-epoch validation Dice and the stability target."""
    args = makefile_demo_args()
    data = ensure_demo_data("unet2d_paper", 2, ctx.out / "data" / "demo2d")
    jobs = [
        Job(
            f"demo2d seed {s}",
            training_command(
                "unet2d_paper",
                ctx.out / "demo2d" / f"seed{s}",
                data=["--dataset_dir", str(data.parent)],
                extra=[*args, "--seed", str(s)],
            ),
            ctx.out / "logs" / f"demo2d_seed{s}.log",
        )
        for s in ctx.seeds
    ]
    run_jobs(jobs, ctx.parallel)
    runs = {}
    for s, job in zip(ctx.seeds, jobs):
        hist = training_history(ctx.out / "demo2d" / f"seed{s}")
        values = hist.get("val_mean_dice", [])
        runs[str(s)] = {**job_record(job), **hist, **stability(values, TARGET_FINAL_DICE_2D)}
    rows = [
        {
            "seed": s,
            "val mean Dice per epoch": _curve(r.get("val_mean_dice", [])),
            "final": _f(r["final"]),
            f"min after ep {WARMUP_EPOCHS}": _f(r["min_after_warmup"]),
            "pass": r["pass"],
            "min": _f((r.get("wall_s") or math.nan) / 60),
        }
        for s, r in runs.items()
    ]
    print(
        f"\n## demo2d: make demo training ({' '.join(args)}) per seed; target final >= "
        f"{TARGET_FINAL_DICE_2D}, no epoch after {WARMUP_EPOCHS} below {TARGET_MIN_DICE_AFTER}"
    )
    print(_table(rows))
    return {
        "demo_train_args": args,
        "data": str(data.parent),
        "runs": runs,
        "all_pass": all(r["pass"] for r in runs.values()),
        "passed": sum(r["pass"] for r in runs.values()),
    }


def _selfconfig_jobs(ctx: Context, name: str) -> tuple[Path, Job, Job]:
    """Generate the dataset, plan it (synchronously) and return the manifest, plan job and the
    training job."""
    from bench.datasets import generate_dataset

    manifest = ctx.out / "data" / name / "manifest.csv"
    if not manifest.is_file():
        manifest = generate_dataset(name, manifest.parent, seed=0)
    plan_job = Job(
        f"{name} plan",
        [
            unet_med_exe(),
            "plan",
            str(manifest),
            "--output",
            str(ctx.out / name / "plan" / "PLAN.json"),
            "--no-progress",
        ],
        ctx.out / "logs" / f"{name}_plan.log",
    )
    train_job = Job(
        f"{name} training",
        training_command(
            "unet3d",
            ctx.out / name / "run",
            data=["--manifest", str(manifest)],
            extra=["--time_limit_minutes", f"{ctx.time_limit:g}"],
        ),
        ctx.out / "logs" / f"{name}_training.log",
    )
    return manifest, plan_job, train_job


def sections_selfconfig(ctx: Context, names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """mr / ct_aniso: dataset, plan check, default time-budgeted training, test Dice per class."""
    prepared = {name: _selfconfig_jobs(ctx, name) for name in names}
    run_jobs([p[1] for p in prepared.values()], ctx.parallel, threads=1)
    run_jobs([p[2] for p in prepared.values()], ctx.parallel, threads=1)
    infer_jobs = {}
    for name, (manifest, _, _) in prepared.items():
        infer_jobs[name] = Job(
            f"{name} infer",
            infer_command(
                "unet3d",
                [ctx.out / name / "run" / "models" / "model.pt"],
                manifest.parent / "images",
                ctx.out / name / "infer",
                manifest,
            ),
            ctx.out / "logs" / f"{name}_infer.log",
        )
    run_jobs(list(infer_jobs.values()), ctx.parallel, threads=1)
    results = {}
    rows = []
    for name, (manifest, plan_job, train_job) in prepared.items():
        plan_path = ctx.out / name / "plan" / "PLAN.json"
        plan = plan_summary(plan_path, EXPECTED_PLAN[name]) if plan_path.is_file() else {"error": "no plan"}
        hist = training_history(ctx.out / name / "run")
        test = test_dice(ctx.out / name / "infer" / "report.csv")
        run_plan = ctx.out / name / "run" / "models" / "plan.json"
        results[name] = {
            "data": str(manifest.parent),
            "time_limit_minutes": ctx.time_limit,
            "plan": plan,
            "plan_job": job_record(plan_job),
            "training_plan": plan_summary(run_plan, EXPECTED_PLAN[name]) if run_plan.is_file() else None,
            "training": {**job_record(train_job), **hist},
            "infer": job_record(infer_jobs[name]),
            "test": test,
        }
        rows.append(
            {
                "dataset": name,
                "normalization": plan.get("normalization"),
                "norm ok": plan.get("normalization_ok"),
                "spacing": plan.get("spacing"),
                "spacing ok": plan.get("spacing_ok"),
                "patch": plan.get("patch_size"),
                "batch": plan.get("batch_size"),
                "it/epoch": plan.get("iterations_per_epoch"),
                "epochs": len(hist.get("val_mean_dice", [])),
                "val final": _f((hist.get("val_mean_dice") or [None])[-1]),
                **{f"test {k}": _f(v) for k, v in test.get("dice_per_class", {}).items()},
                "test mean": _f(test.get("mean_dice")),
                "train min": _f((train_job.seconds or math.nan) / 60),
            }
        )
    print(
        f"\n## self-configuration: unet-med plan + default training --time_limit_minutes {ctx.time_limit:g}"
    )
    print(_table(rows))
    for name, r in results.items():
        print(f"{name} val mean Dice per epoch: {_curve(r['training'].get('val_mean_dice', []))}")
    return results


def section_ensemble(ctx: Context) -> dict[str, Any]:
    """3-fold cross-validation on the 2D demo data with the demo recipe; test Dice of each fold
    and of the ensemble of the three."""
    args = makefile_demo_args()
    data = ensure_demo_data("unet2d_paper", 2, ctx.out / "data" / "demo2d")
    folds = (0, 1, 2)
    jobs = [
        Job(
            f"ensemble fold {k}",
            training_command(
                "unet2d_paper",
                ctx.out / "ensemble" / f"fold{k}",
                data=["--dataset_dir", str(data.parent)],
                extra=[*args, "--fold", str(k), "--num_folds", "3"],
            ),
            ctx.out / "logs" / f"ensemble_fold{k}.log",
        )
        for k in folds
    ]
    run_jobs(jobs, ctx.parallel)
    if any(j.returncode != 0 for j in jobs):
        return {
            "error": "a fold training failed",
            "folds": {str(k): job_record(j) for k, j in zip(folds, jobs)},
        }
    ckpts = [ctx.out / "ensemble" / f"fold{k}" / "models" / "model.pt" for k in folds]
    members = {str(k): [c] for k, c in zip(folds, ckpts)} | {"ensemble": ckpts}
    infer_jobs = {
        key: Job(
            f"ensemble infer {key}",
            infer_command(
                "unet2d_paper", cks, data.parent / "images", ctx.out / "ensemble" / f"infer_{key}", data
            ),
            ctx.out / "logs" / f"ensemble_infer_{key}.log",
        )
        for key, cks in members.items()
    }
    run_jobs(list(infer_jobs.values()), ctx.parallel)
    results: dict[str, Any] = {"demo_train_args": args, "data": str(data.parent), "members": {}}
    rows = []
    for key, job in infer_jobs.items():
        test = test_dice(ctx.out / "ensemble" / f"infer_{key}" / "report.csv")
        entry: dict[str, Any] = {"infer": job_record(job), "test": test}
        if key != "ensemble":
            k = int(key)
            entry["training"] = {**job_record(jobs[k]), **training_history(ctx.out / "ensemble" / f"fold{k}")}
        results["members"][key] = entry
        rows.append(
            {
                "model": key if key == "ensemble" else f"fold {key}",
                "val final": _f((entry.get("training", {}).get("val_mean_dice") or [None])[-1]),
                **{f"test {c}": _f(v) for c, v in test.get("dice_per_class", {}).items()},
                "test mean": _f(test.get("mean_dice")),
            }
        )
    fold_means = [results["members"][str(k)]["test"].get("mean_dice", math.nan) for k in folds]
    ens = results["members"]["ensemble"]["test"].get("mean_dice", math.nan)
    results["best_fold_test_mean_dice"] = max(fold_means)
    results["ensemble_test_mean_dice"] = ens
    results["ensemble_ge_best_fold"] = bool(ens >= max(fold_means))
    print("\n## ensemble: 3-fold CV on the 2D demo data (demo recipe), test split")
    print(_table(rows))
    return results


def section_demo3d(ctx: Context) -> dict[str, Any]:
    """bundles/unet3d on its demo data with a time budget, over ``ctx.seeds_3d``."""
    data = ensure_demo_data("unet3d", 3, ctx.out / "data" / "demo3d")
    seeds = ctx.seeds_3d
    jobs = [
        Job(
            f"demo3d seed {s}",
            training_command(
                "unet3d",
                ctx.out / "demo3d" / f"seed{s}",
                data=["--dataset_dir", str(data.parent)],
                extra=["--time_limit_minutes", f"{ctx.time_limit_3d:g}", "--seed", str(s)],
            ),
            ctx.out / "logs" / f"demo3d_seed{s}.log",
        )
        for s in seeds
    ]
    run_jobs(jobs, ctx.parallel)
    infer_jobs = [
        Job(
            f"demo3d infer seed {s}",
            infer_command(
                "unet3d",
                [ctx.out / "demo3d" / f"seed{s}" / "models" / "model.pt"],
                data.parent / "images",
                ctx.out / "demo3d" / f"infer_seed{s}",
                data,
            ),
            ctx.out / "logs" / f"demo3d_infer_seed{s}.log",
        )
        for s in seeds
    ]
    run_jobs(infer_jobs, ctx.parallel)
    runs = {}
    rows = []
    for s, job, ijob in zip(seeds, jobs, infer_jobs):
        hist = training_history(ctx.out / "demo3d" / f"seed{s}")
        test = test_dice(ctx.out / "demo3d" / f"infer_seed{s}" / "report.csv")
        st = stability(hist.get("val_mean_dice", []), TARGET_FINAL_DICE_3D)
        runs[str(s)] = {**job_record(job), **hist, **st, "infer": job_record(ijob), "test": test}
        rows.append(
            {
                "seed": s,
                "val mean Dice per epoch": _curve(hist.get("val_mean_dice", [])),
                "final": _f(st["final"]),
                "pass": st["pass"],
                **{f"test {c}": _f(v) for c, v in test.get("dice_per_class", {}).items()},
                "test mean": _f(test.get("mean_dice")),
                "min": _f(job.seconds / 60),
            }
        )
    print(
        f"\n## demo3d: bundles/unet3d demo data, --time_limit_minutes {ctx.time_limit_3d:g}; "
        f"target final >= {TARGET_FINAL_DICE_3D}"
    )
    print(_table(rows))
    return {"time_limit_minutes": ctx.time_limit_3d, "data": str(data.parent), "runs": runs}


# ------------------------------------------------------------------------------------ figures
def section_kind(key: str) -> str | None:
    """The section a results key belongs to (``demo3d_15min`` -> ``demo3d``), or None."""
    return max(
        (name for name in SECTIONS if key == name or key.startswith(name + "_")), key=len, default=None
    )


def headline_figures(results: Mapping[str, Any]) -> dict[str, Any]:
    """The flat figures of the final JSON line (figure names start with the results key)."""
    fig: dict[str, Any] = {}
    for key, r in results.items():
        kind = section_kind(key)
        if kind == "demo2d":
            for s, run in r["runs"].items():
                fig[f"{key}_seed{s}_final"] = run["final"]
                fig[f"{key}_seed{s}_min_after2"] = run["min_after_warmup"]
            fig[f"{key}_passed"] = f"{r['passed']}/{len(r['runs'])}"
        elif kind in ("mr", "ct_aniso"):
            # a section recorded by hand (no plan step) has no plan check
            plan = r.get("plan", {})
            if plan:
                fig[f"{key}_plan_ok"] = bool(plan.get("normalization_ok") and plan.get("spacing_ok"))
            for c, v in r.get("test", {}).get("dice_per_class", {}).items():
                fig[f"{key}_test_dice_{c}"] = v
            fig[f"{key}_validations"] = len(r.get("training", {}).get("val_mean_dice", []))
        elif kind == "ensemble" and "members" in r:
            for member, m in r["members"].items():
                name = member if member == "ensemble" else f"fold{member}"
                fig[f"{key}_{name}_test_mean_dice"] = m["test"].get("mean_dice")
            fig[f"{key}_ge_best_fold"] = r["ensemble_ge_best_fold"]
        elif kind == "demo3d":
            for s, run in r["runs"].items():
                fig[f"{key}_seed{s}_final"] = run["final"]
                fig[f"{key}_seed{s}_min_after2"] = run.get("min_after_warmup")
                fig[f"{key}_seed{s}_test_mean_dice"] = run["test"].get("mean_dice")
            passed = sum(bool(run.get("pass")) for run in r["runs"].values())
            fig[f"{key}_passed"] = f"{passed}/{len(r['runs'])}"
    return fig


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_results(results: Mapping[str, Any], path: Path = RESULTS_FILE) -> dict[str, Any]:
    """Merge this run's sections into the results file (earlier sections not re-run are kept),
    atomically; the merged document."""
    from unet_med.atomic_files import atomic_output

    merged: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    merged.setdefault("sections", {}).update(_jsonable(dict(results)))
    merged["figures"] = _jsonable(headline_figures(merged["sections"]))
    merged["updated"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    # paths relative to the repository, so the committed file names no machine's folders
    text = json.dumps(merged, indent=1).replace(f"{REPO}/", "") + "\n"
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--section", nargs="+", default=["all"], choices=[*SECTIONS, "all"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4], help="demo2d seeds")
    parser.add_argument("--seeds-3d", nargs="+", type=int, default=[0, 1], help="demo3d seeds")
    parser.add_argument("--time-limit-minutes", type=float, default=15.0, help="mr / ct_aniso budget")
    parser.add_argument("--time-limit-3d", type=float, default=8.0, help="demo3d budget (minutes)")
    parser.add_argument("--parallel", type=int, default=2, help="trainings at a time (1 thread each)")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "quality")
    parser.add_argument("--results", type=Path, default=RESULTS_FILE)
    parser.add_argument(
        "--key-suffix", default="", help="store the sections as e.g. demo3d_15min in the results file"
    )
    args = parser.parse_args(argv)
    wanted = SECTIONS if "all" in args.section else [s for s in SECTIONS if s in args.section]
    ctx = Context(
        args.out.resolve(),
        args.seeds,
        args.time_limit_minutes,
        args.time_limit_3d,
        args.parallel,
        seeds_3d=args.seeds_3d,
    )
    results: dict[str, Any] = {}
    runners: dict[str, Callable[[], Any]] = {
        "demo2d": lambda: {"demo2d": section_demo2d(ctx)},
        "selfconfig": lambda: sections_selfconfig(ctx, [s for s in ("mr", "ct_aniso") if s in wanted]),
        "ensemble": lambda: {"ensemble": section_ensemble(ctx)},
        "demo3d": lambda: {"demo3d": section_demo3d(ctx)},
    }
    order = [
        s
        for s in ("demo2d", "selfconfig", "ensemble", "demo3d")
        if s in wanted or (s == "selfconfig" and {"mr", "ct_aniso"} & set(wanted))
    ]
    start = time.perf_counter()
    for stage in order:
        t0 = time.perf_counter()
        try:
            results.update({f"{k}{args.key_suffix}": v for k, v in runners[stage]().items()})
        except Exception as exc:  # record and go on with the next section
            import traceback

            traceback.print_exc()
            results[f"{stage}_error"] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"[{stage}: {(time.perf_counter() - t0) / 60:.1f} min]", flush=True)
        merged = write_results(results, args.results)
    print(f"total {(time.perf_counter() - start) / 60:.1f} min; results in {args.results}")
    # the figures of every section in the results file, this run's and earlier ones'
    print(json.dumps(merged["figures"] if order else {}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
