"""``unet-med plan``: fingerprint a manifest's training scans and write a plan (a MONAI config
override of bundle ids) with the command that trains with it.

Exit codes: 0 plan written, 1 bad data (the message names the scan), 2 usage errors.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="configure training from the data: fingerprint a manifest, write PLAN.json",
        description="Read every training scan of MANIFEST once (spacings, shapes, foreground intensities, "
        "labels, modality) and choose normalisation, target spacing, patch and batch size, foreground "
        "sampling and epoch length for a bundle, written as a MONAI config override file with a comment "
        "per choice. The fingerprint is cached beside the plan and reused while the manifest is unchanged.",
    )
    parser.add_argument("manifest", metavar="MANIFEST", help="manifest CSV (subject_id, image, label, split)")
    parser.add_argument(
        "--bundle", default=None,
        help="bundle folder or name (bundles/unet2d_paper, bundles/unet3d); default: the one that fits "
        "the data's dimensionality",
    )  # fmt: skip
    parser.add_argument("--output", default="PLAN.json", help="plan file to write (default: PLAN.json)")
    parser.add_argument(
        "--modality", default=None, choices=("CT", "MR", "other"),
        help="override the modality found from DICOM tags, the manifest sidecar or the intensities",
    )  # fmt: skip
    parser.add_argument("--device", default="cpu", help="device training will run on (default: cpu)")
    parser.add_argument(
        "--memory-budget-mb", type=float, default=None,
        help="memory one training step may use, MiB (default: 4096 on CPU, 80%% of a visible GPU)",
    )  # fmt: skip
    parser.add_argument(
        "--base-width", type=int, default=None,
        help="plan for this network width instead of the bundle's (written to the plan)",
    )  # fmt: skip
    parser.add_argument(
        "--depth", type=int, default=None,
        help="plan for this many poolings (default: the preset's; on a CPU fewer when the preset's "
        "smallest training step would be too slow)",
    )  # fmt: skip
    parser.add_argument(
        "--num-classes", type=int, default=None,
        help="declared label classes 0..N-1 (default: the manifest sidecar's labels)",
    )  # fmt: skip
    parser.add_argument(
        "--cache-dir", default=None,
        help="folder of the cached fingerprint.json (default: the plan file's folder)",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_plan)


def _table(plan: dict[str, Any], output: Path) -> str:
    info = plan["_planned_with_"]
    norm = plan["normalization"]
    if norm == "ct_dataset":
        lo, hi = plan["intensity_clip"]
        mean, std = plan["intensity_mean"], plan["intensity_std"]
        norm += f"  clip [{lo:.4g}, {hi:.4g}] HU, mean {mean:.4g}, std {std:.4g}"
    step = info["estimated_step_s"]
    rows = [
        ("bundle", plan["bundle"]),
        ("normalization", norm),
        ("spacing", " x ".join(f"{v:.4g}" for v in plan["spacing"]) + " mm"),
        (
            "patch_size",
            " x ".join(map(str, plan["patch_size"]))
            + f"  (network input {' x '.join(map(str, info['input_patch_size']))})",
        ),
        (
            "batch_size",
            f"{plan['batch_size']}  (~{info['estimated_memory_mb']:.0f} of {info['memory_budget_mb']:.0f} MiB"
            + ("" if info["fits_budget"] else ", OVER BUDGET")
            + ")",
        ),
        ("pos / neg", f"{plan['pos']} / {plan['neg']}  (a third of patches centred on foreground)"),
        (
            "iterations_per_epoch",
            f"{plan['iterations_per_epoch']}" + (f"  (~{step:.2f} s per step)" if step is not None else ""),
        ),
        ("val_interval", str(plan["val_interval"])),
        ("prefetch_batches", f"{plan['prefetch_batches']}  (batches prepared in a background thread)"),
    ]
    width = max(len(k) for k, _ in rows)
    head = (
        f"plan for {plan['manifest']}: {info['training_scans']} training scans, {info['channels']} "
        f"channel(s), {info['modality']} ({info['modality_source']}), {info['preset']} "
        f"width {info['base_width']}, {plan['depth']} poolings"
    )
    lines = [head] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
    lines += [
        f"wrote {output} (every choice is explained in its _comments_)",
        "train with:",
        f"  {plan['training_command']}",
    ]
    return "\n".join(lines)


def run_plan(args: argparse.Namespace) -> int:
    import logging

    from unet_med.data.loading import ScanLoadError
    from unet_med.data.manifest import ManifestError
    from unet_med.planning import FingerprintError, PlanError, cached_fingerprint, make_plan, write_plan
    from unet_med.planning.plan import BUNDLES, _bundle_name

    logging.basicConfig(format="%(message)s")
    logging.getLogger("unet_med.planning").setLevel(logging.INFO)
    manifest = Path(args.manifest)
    if not manifest.is_file():
        print(f"error: {manifest}: manifest file not found")
        return 2
    if args.bundle is not None and _bundle_name(args.bundle) not in BUNDLES:
        print(f"error: unknown bundle {args.bundle!r}; plans are made for {sorted(BUNDLES)}")
        return 2
    for name in ("memory_budget_mb", "base_width", "depth", "num_classes"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            print(f"error: --{name.replace('_', '-')} must be > 0, got {value}")
            return 2
    output = Path(args.output)
    cache_dir = Path(args.cache_dir) if args.cache_dir else output.resolve().parent
    try:
        fingerprint = cached_fingerprint(
            manifest,
            cache_dir,
            modality=args.modality,
            num_classes=args.num_classes,
            progress=not args.no_progress,
        )
        plan = make_plan(
            fingerprint,
            bundle=args.bundle,
            device=args.device,
            memory_budget_mb=args.memory_budget_mb,
            base_width=args.base_width,
            depth=args.depth,
            plan_path=args.output,
        )
    except (FingerprintError, PlanError, ManifestError, ScanLoadError) as exc:
        print(f"error: {exc}")
        return 1
    write_plan(plan, output)
    print(_table(plan, output))
    return 0
