"""Plans: the preprocessing and training choices made from a dataset fingerprint, as a MONAI
config override file of the bundle's own ids.

:func:`make_plan` turns a fingerprint (:mod:`unet_med.planning.fingerprint`) into a dict such as::

    {"plan_version": 1, "bundle": "unet3d", "normalization": "ct_dataset", "spacing": [...],
     "patch_size": [...], "batch_size": 2, ..., "_comments_": {"spacing": "why ...", ...}}

that merges over a bundle's ``training.json`` the MONAI way::

    python -m monai.bundle run training \\
        --config_file "['bundles/unet3d/configs/training.json','PLAN.json']" ...

Keys starting with ``_`` (``_comments_``: one explanation per id; ``_planned_with_``: the
numbers the choices came from) are plain data to MONAI's ``ConfigParser`` and are skipped by the
bundles' override check. The rules follow nnU-Net's planner (Isensee et al. 2021), sized for the
target device:

- normalisation: CT -> clip to the dataset's foreground 0.5/99.5 percentiles and z-score with its
  foreground mean/std; anything else -> per-scan z-score over the body foreground;
- target spacing: the median spacing; when the largest/smallest median spacing ratio exceeds 3,
  the coarse axis takes the 10th percentile of its spacings instead;
- patch (network *output*) size and batch size: the legal output size nearest the median
  resampled image shape, shrunk along the axis that is largest relative to that shape until a
  training step with batch 2 fits the memory budget; batch 1 (with the larger patch that fits
  once) when two patches do not fit, or fit only so small that together they hold fewer output
  voxels than the single patch (the valid network's context margin makes small outputs costly);
- foreground oversampling: a third of the patches centred on a labelled voxel;
- iterations per epoch and validation interval from the estimated step time on the device;
- data loading: one batch prepared ahead in a background thread while the network trains.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BUNDLES",
    "PLAN_IDS",
    "PLAN_VERSION",
    "PlanError",
    "check_plan",
    "make_plan",
    "read_plan",
    "target_spacing",
    "training_command",
    "write_plan",
]

log = logging.getLogger(__name__)

PLAN_VERSION = 1
# The bundle ids a plan sets (besides ``base_width`` when planned for an explicit width).
PLAN_IDS = (
    "plan_version",
    "bundle",
    "manifest",
    "manifest_sha256",
    "num_classes",
    "class_names",
    "normalization",
    "intensity_clip",
    "intensity_mean",
    "intensity_std",
    "spacing",
    "resample_order_image",
    "resample_order_label",
    "base_width",
    "depth",
    "norm",
    "patch_size",
    "batch_size",
    "pos",
    "neg",
    "iterations_per_epoch",
    "val_interval",
    "prefetch_batches",
    "training_command",
)

# What planning needs to know of each bundle; a bundle folder's training.json overrides the
# literal values it holds (preset, base_width, crop_foreground).
BUNDLES: dict[str, dict[str, Any]] = {
    "unet2d_paper": {
        "spatial_dims": 2, "preset": "paper", "base_width": 64,
        "crop_foreground": False, "foreground_margin": 0,
    },
    "unet3d": {
        "spatial_dims": 3, "preset": "cicek3d", "base_width": 32,
        "crop_foreground": True, "foreground_margin": 4,
    },
}  # fmt: skip

# nnU-Net: an axis whose median spacing is > 3x the finest one is treated as the coarse axis.
ANISOTROPY_RATIO = 3.0
# Default training memory budgets (MiB) when none is given: CPU RAM is rarely the limit (time
# is); on a GPU 80% of its memory, or nnU-Net's 8 GB reference when the GPU is not visible here.
DEFAULT_BUDGET_MB = {"cpu": 4096.0, "gpu": 8192.0}
GPU_MEMORY_FRACTION = 0.8
# On a CPU the preset widths (64 in 2D, 32 in 3D) make steps of many seconds: a CPU plan trains
# the same architecture narrower unless a width is given, so minutes buy thousands of updates.
CPU_BASE_WIDTH = {2: 16, 3: 8}
# On a CPU time, not memory, is the limit: the patch also shrinks until one step is estimated to
# take at most this long, so a 15-minute training makes hundreds of updates.
CPU_STEP_TARGET_S = 3.0
# A CPU plan keeps at least this many poolings when it makes a network shallower than its preset.
MIN_CPU_DEPTH = 2
# Step-time estimates on a CPU use this nominal convolution throughput instead of timing the
# machine, so the same data always gives the same plan (a 2-core machine measures 2-8 GFLOP/s at
# the CPU widths depending on load, and real steps ran 3-6x faster than this nominal estimate;
# a caller may pass a measured ``throughput_flops`` instead).
NOMINAL_CPU_FLOPS = 5e9
# Iterations per epoch: nnU-Net's 250 on a GPU; on a CPU as many as fill about 90 s.
GPU_ITERATIONS = 250
CPU_EPOCH_SECONDS = 90.0
CPU_ITERATIONS_RANGE = (10, 250)
# Validation may take at most this share of the training time on a CPU.
CPU_VALIDATION_SHARE = 0.25
# A whole training step (loss, optimiser, data) takes about twice the convolution time that
# device_throughput predicts: 1.7-2.3x measured on this project's networks on CPU.
STEP_OVERHEAD = 2.0
# A CPU step slower than this gets a hint to plan a narrower network.
SLOW_CPU_STEP_S = 10.0
# nnU-Net caps the batch at 5% of the dataset's voxels when memory allows more than 2.
BATCH_DATASET_FRACTION = 0.05
# Training batches prepared ahead in a background thread (MONAI ThreadDataLoader) while the
# network trains: the random part of the training chain then overlaps the step. Measured on the
# CPU plans of both bundles (docs/BENCHMARKS.md section 3, 2-core CPU): the wait fell from 8-17%
# of the step to under 0.5%; one worker process hid less of it (every batch crosses a process
# boundary) and, at 2 threads, slowed the 3D step.
PREFETCH_BATCHES = 1


class PlanError(ValueError):
    """A plan that cannot be made or used; the message says what was expected and found."""


# --------------------------------------------------------------------------- bundles


def _bundle_settings(bundle: str | Path | None, spatial_dims: int) -> tuple[str, str, dict[str, Any]]:
    """(bundle name, bundle path for the command line, planning settings) for ``bundle``: a
    name of :data:`BUNDLES`, a bundle folder, or None for the bundle that fits ``spatial_dims``."""
    if bundle is None:
        name = "unet2d_paper" if spatial_dims == 2 else "unet3d"
        return name, f"bundles/{name}", dict(BUNDLES[name])
    text = str(bundle).rstrip("/")
    folder = Path(text)
    name = _bundle_name(folder)
    if name not in BUNDLES:
        raise PlanError(f"unknown bundle {text!r}; plans are made for {sorted(BUNDLES)}")
    settings = dict(BUNDLES[name])
    training = folder / "configs" / "training.json"
    if training.is_file():
        config = json.loads(training.read_text())
        for key in ("preset", "base_width", "crop_foreground"):
            value = config.get(key)
            if value is not None and not (isinstance(value, str) and value[:1] in "$@%"):
                settings[key] = value
    path = text if "/" in text or folder.is_dir() else f"bundles/{name}"
    return name, path, settings


def _bundle_name(bundle: str | Path) -> str:
    """A bundle's name: its metadata's ``name`` for a bundle folder, else the last path part."""
    folder = Path(str(bundle).rstrip("/"))
    meta = folder / "configs" / "metadata.json"
    if meta.is_file():
        return str(json.loads(meta.read_text()).get("name", folder.name))
    return folder.name


# --------------------------------------------------------------------------- spacing


def target_spacing(spacings: Sequence[Sequence[float]]) -> tuple[list[float], str]:
    """nnU-Net's target spacing (mm per axis) for a dataset's scan spacings, and why.

    The median spacing per axis; when the coarsest median spacing is more than
    :data:`ANISOTROPY_RATIO` times the finest, the coarse axis takes the 10th percentile of its
    spacings (finer than the median, so thin-slice scans are not blurred to the typical thick
    slice), but never finer than the other axes' target.
    """
    arr = np.asarray(spacings, dtype=float)
    median = np.median(arr, axis=0)
    ratio = float(median.max() / median.min())
    if ratio <= ANISOTROPY_RATIO:
        return [float(v) for v in median], (
            f"median spacing {_fmt(median)} mm (largest/smallest {ratio:.2f} <= "
            f"{ANISOTROPY_RATIO:g}: isotropic rule)"
        )
    axis = int(np.argmax(median))
    target = median.copy()
    others = np.delete(median, axis)
    target[axis] = max(float(np.percentile(arr[:, axis], 10)), float(others.max()))
    return [float(v) for v in target], (
        f"anisotropic data (median spacing {_fmt(median)} mm, largest/smallest {ratio:.2f} > "
        f"{ANISOTROPY_RATIO:g}): axis {axis} takes the 10th percentile of its spacings "
        f"({target[axis]:.4g} mm), the other axes their median"
    )


def _fmt(values: Sequence[float]) -> str:
    return "x".join(f"{float(v):.4g}" for v in values)


# --------------------------------------------------------------------------- patch and batch


def _legal_outputs(spec: Any, largest: float) -> list[int]:
    """Legal output sizes of one axis of a U-Net, ascending, up to the first one >= ``largest``."""
    from unet_med.networks.shapes import min_input_size, valid_output_size

    sizes = [valid_output_size(min_input_size(1, spec), spec)[0]]
    while sizes[-1] < largest:
        sizes.append(valid_output_size(min_input_size(sizes[-1] + 1, spec), spec)[0])
    return sizes


def _input_size(output: Sequence[int], spec: Any) -> tuple[int, ...]:
    from unet_med.networks.shapes import min_input_size

    return min_input_size(tuple(output), spec)


def _fit_patch(
    median_shape: Sequence[float],
    spec: Any,
    cost: Any,
    budget_bytes: float,
    batch_size: int,
    max_step_flops: float = math.inf,
) -> tuple[list[int], bool]:
    """The largest legal output patch near ``median_shape`` whose training step with
    ``batch_size`` fits ``budget_bytes`` (and costs at most ``max_step_flops``), and whether it
    fits at all.

    Starts at the legal size nearest the median shape per axis, then steps down (one legal size
    at a time) the axis that is largest relative to the median shape, keeping the aspect ratio.
    """
    options = [_legal_outputs(spec, t) for t in median_shape]
    index = [min(range(len(o)), key=lambda i: (abs(o[i] - t), -o[i])) for o, t in zip(options, median_shape)]

    def patch() -> list[int]:
        return [o[i] for o, i in zip(options, index)]

    def too_big() -> bool:
        size = _input_size(patch(), spec)
        too_much_memory = cost.memory_bytes(size, batch_size) > budget_bytes
        return too_much_memory or cost.step_flops(size, batch_size) > max_step_flops

    while too_big():
        shrinkable = [a for a in range(len(index)) if index[a] > 0]
        if not shrinkable:
            return patch(), False
        axis = max(shrinkable, key=lambda a: patch()[a] / max(median_shape[a], 1.0))
        index[axis] -= 1
    return patch(), True


# --------------------------------------------------------------------------- the plan


def _median_shape(
    fingerprint: dict[str, Any], spacing: Sequence[float], settings: dict[str, Any]
) -> list[float]:
    """Median image shape (voxels) after the bundle's foreground crop and resampling to ``spacing``."""
    shapes = []
    margin = int(settings.get("foreground_margin", 0))
    for rec in fingerprint["scans"]:
        if settings.get("crop_foreground"):
            base = [min(c + 2 * margin, s) for c, s in zip(rec["cropped_shape"], rec["shape"])]
        else:
            base = rec["shape"]
        shapes.append([b * sp / t for b, sp, t in zip(base, rec["spacing"], spacing)])
    return [float(v) for v in np.median(np.asarray(shapes), axis=0)]


def _num_classes(fingerprint: dict[str, Any]) -> int:
    if fingerprint.get("num_classes"):
        return int(fingerprint["num_classes"])
    if fingerprint.get("labels"):
        return max(int(k) for k in fingerprint["labels"]) + 1
    values = [int(v) for v in fingerprint.get("classes", {})]
    return max(max(values, default=1) + 1, 2)


def _normalisation(fingerprint: dict[str, Any]) -> tuple[dict[str, Any], str]:
    modality = fingerprint["modality"]
    stats = fingerprint["intensity"]["per_channel"]
    zscore = {"normalization": "zscore_foreground", "intensity_clip": None, "intensity_mean": None,
              "intensity_std": None}  # fmt: skip
    if modality != "CT":
        return zscore, (
            f"modality {modality} ({fingerprint['modality_source']}): intensities have no absolute "
            "meaning, so each scan is z-scored per channel with the mean/std of its body foreground "
            "(Otsu mask, not 'non-zero': scanner noise makes air non-zero), so the normalised values "
            "do not depend on how much background the field of view holds"
        )
    if len(stats) != 1:
        return zscore, (
            f"modality CT with {len(stats)} channels: the dataset CT normalisation is defined for "
            "one channel, so each channel is z-scored per scan over the body foreground (Otsu mask)"
        )
    if not stats[0]:
        raise PlanError(
            f"{fingerprint['manifest']}: no labelled voxels (label > 0) in the training scans, so the "
            "CT foreground intensity statistics cannot be computed; check the labels"
        )
    s = stats[0]
    return (
        {
            "normalization": "ct_dataset",
            "intensity_clip": [s["percentile_00_5"], s["percentile_99_5"]],
            "intensity_mean": s["mean"],
            "intensity_std": s["std"],
        },
        f"modality CT ({fingerprint['modality_source']}): HU are absolute, so every scan is clipped "
        f"to the dataset's foreground 0.5-99.5 percentiles [{s['percentile_00_5']:.4g}, "
        f"{s['percentile_99_5']:.4g}] HU and z-scored with its foreground mean {s['mean']:.4g} and "
        f"std {s['std']:.4g} HU ({s['n_samples']} voxels sampled from labels > 0, as nnU-Net)",
    )


def _device_kind(device: str) -> str:
    return "cpu" if str(device).split(":")[0] == "cpu" else "gpu"


def _default_budget_mb(device: str) -> tuple[float, str]:
    import torch

    if _device_kind(device) == "cpu":
        return DEFAULT_BUDGET_MB["cpu"], "default CPU budget"
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(dev.index or 0).total_memory / 2**20
        return GPU_MEMORY_FRACTION * total, f"{GPU_MEMORY_FRACTION:.0%} of the GPU's {total:.0f} MiB"
    return DEFAULT_BUDGET_MB["gpu"], "nnU-Net's 8 GB reference (GPU not visible while planning)"


def _throughput(device: str, spatial_dims: int, width: int) -> float | None:
    import torch

    from unet_med.planning.training_cost import device_throughput

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return None
    return device_throughput(dev, spatial_dims=spatial_dims, width=max(int(width), 8))


def make_plan(
    fingerprint: dict[str, Any],
    *,
    bundle: str | Path | None = None,
    device: str = "cpu",
    memory_budget_mb: float | None = None,
    base_width: int | None = None,
    depth: int | None = None,
    plan_path: str | Path = "PLAN.json",
    throughput_flops: float | None = None,
) -> dict[str, Any]:
    """The plan for ``fingerprint``: a MONAI config override dict of bundle ids (see the module
    docstring and :data:`PLAN_IDS`), with ``_comments_`` explaining every choice.

    Args:
        fingerprint: from :func:`~unet_med.planning.fingerprint.dataset_fingerprint`.
        bundle: ``"unet2d_paper"``, ``"unet3d"`` or a bundle folder; None: the bundle that fits
            the data's dimensionality.
        device: where training will run (``"cpu"``, ``"cuda"``, ``"cuda:1"``): sets the memory
            budget default and the iterations per epoch.
        memory_budget_mb: memory (MiB) one training step may use; default: 4096 on CPU, 80% of
            the GPU's memory on a visible GPU, else 8192.
        base_width: plan for this network width instead of the bundle's (then also written to
            the plan as ``base_width``).
        depth: plan for this many poolings instead of the preset's (or, on a CPU, of the
            deepest network whose smallest training step fits :data:`CPU_STEP_TARGET_S`).
        plan_path: the plan file's path as the printed training command should name it.
        throughput_flops: FLOP/s of the device for the step-time estimate; default: timed with
            :func:`~unet_med.planning.training_cost.device_throughput` (None when planning for
            a GPU that is not visible here: then the GPU defaults apply).

    Raises:
        PlanError: a bundle that does not fit the data, or data without what the plan needs.
    """
    from unet_med.networks import PRESETS, context_margin, create_unet, preset_depth
    from unet_med.planning.training_cost import training_cost

    dims = int(fingerprint["spatial_dims"])
    name, bundle_path, settings = _bundle_settings(bundle, dims)
    if settings["spatial_dims"] != dims:
        raise PlanError(
            f"bundle {name} trains {settings['spatial_dims']}D networks but the scans of "
            f"{fingerprint['manifest']} are {dims}D; use bundle "
            f"{'unet2d_paper' if dims == 2 else 'unet3d'} (or leave --bundle out)"
        )
    comments: dict[str, str] = {}
    plan: dict[str, Any] = {
        "plan_version": PLAN_VERSION,
        "bundle": name,
        "manifest": fingerprint["manifest"],
        "manifest_sha256": fingerprint["manifest_sha256"],
    }
    comments["plan_version"] = f"plan format {PLAN_VERSION} (unet_med.planning)"
    comments["bundle"] = f"{dims}D scans -> bundle {name}; a plan is refused by another bundle" + (
        "" if bundle is not None else " (chosen from the data's dimensionality)"
    )
    comments["manifest"] = "the manifest the plan was made from (absolute path)"
    comments["manifest_sha256"] = "SHA-256 of the manifest's bytes; a plan is refused for a changed manifest"

    classes = _num_classes(fingerprint)
    labels = {int(k): str(v) for k, v in (fingerprint.get("labels") or {}).items()}
    plan["num_classes"] = classes
    plan["class_names"] = [labels.get(i, "background" if i == 0 else f"label_{i}") for i in range(classes)]
    comments["num_classes"] = comments["class_names"] = (
        "classes (background first) from the manifest's label names"
        if labels
        else "classes from the label values found in the training scans (no label names in the "
        "manifest's sidecar: a training without this plan file uses the bundle's default names)"
    )

    norm, why = _normalisation(fingerprint)
    plan.update(norm)
    comments["normalization"] = why
    for key in ("intensity_clip", "intensity_mean", "intensity_std"):
        comments[key] = (
            "used by normalization 'ct_dataset' (HU)"
            if norm[key] is not None
            else "unused by this normalization"
        )

    spacing, why = target_spacing([rec["spacing"] for rec in fingerprint["scans"]])
    plan["spacing"] = spacing
    comments["spacing"] = f"target voxel spacing in mm: {why}"
    plan["resample_order_image"] = 1
    plan["resample_order_label"] = 0
    comments["resample_order_image"] = "image resampling: linear (order 1)"
    comments["resample_order_label"] = "label resampling: nearest neighbour (order 0), keeps class values"

    if base_width is not None:
        width, width_source = int(base_width), "given"
    elif _device_kind(device) == "cpu":
        width = min(int(settings["base_width"]), CPU_BASE_WIDTH[dims])
        width_source = (
            f"CPU width: the {settings['preset']} architecture at base width {width} instead of "
            f"{settings['base_width']}, so a step takes about a second on a CPU (GPU plans keep the preset's)"
        )
    else:
        width, width_source = int(settings["base_width"]), f"the {settings['preset']} preset's width"
    channels = int(fingerprint["channels"])
    full_depth = preset_depth(settings["preset"])

    def sized(depth: int) -> tuple[Any, Any, float]:
        """The network of ``depth`` poolings, its training cost and its smallest step's FLOPs."""
        net = create_unet(
            settings["preset"], in_channels=channels, out_channels=classes, base_width=width, depth=depth
        )
        spec = net.spec
        cost = training_cost(net, _input_size((max(2**spec.poolings, 8),) * dims, spec), in_channels=channels)
        return spec, cost, cost.step_flops(_input_size((1,) * dims, spec), 1)

    if memory_budget_mb is None:
        memory_budget_mb, budget_source = _default_budget_mb(device)
    else:
        budget_source = "given"
    budget = float(memory_budget_mb) * 2**20
    median_shape = _median_shape(fingerprint, spacing, settings)
    throughput_source = "given" if throughput_flops is not None else "measured"
    if throughput_flops is None and _device_kind(device) == "cpu":
        throughput_flops = NOMINAL_CPU_FLOPS
        throughput_source = "nominal for a CPU, so plans are reproducible"
    throughput = throughput_flops if throughput_flops is not None else _throughput(device, dims, width)
    # on a CPU the step time caps the patch too (time is the limit there, not memory)
    max_step_flops = (
        CPU_STEP_TARGET_S * throughput / STEP_OVERHEAD
        if _device_kind(device) == "cpu" and throughput is not None
        else math.inf
    )
    if depth is not None:
        net_depth, depth_source = int(depth), "given"
        spec, cost, smallest_step = sized(net_depth)
    else:
        net_depth, depth_source = full_depth, f"the {settings['preset']} preset's {full_depth} poolings"
        spec, cost, smallest_step = sized(net_depth)
        # A valid network's context grows with its depth (88 voxels per axis for the 3D U-Net's
        # three poolings, 40 for two): on a CPU even the smallest output of the deepest network
        # can cost many seconds per step, nearly all of it context. nnU-Net sizes the depth to
        # the patch; here the plan keeps the deepest network whose smallest step fits the target.
        shallower = range(full_depth - 1, MIN_CPU_DEPTH - 1, -1) if smallest_step > max_step_flops else ()
        for candidate in shallower:
            c_spec, c_cost, c_smallest = sized(candidate)
            if c_smallest <= max_step_flops:
                depth_source = (
                    f"{candidate} poolings instead of the {settings['preset']} preset's {full_depth}: with "
                    f"{full_depth}, even the smallest legal output patch costs an estimated "
                    f"{STEP_OVERHEAD * smallest_step / throughput:.1f} s per step on {device} (target "
                    f"{CPU_STEP_TARGET_S:g} s), nearly all of it the valid network's context; {candidate} "
                    f"poolings keep a context of {2 * context_margin(c_spec)[0]} voxels per axis"
                )
                net_depth, spec, cost, smallest_step = candidate, c_spec, c_cost, c_smallest
                break
    if smallest_step > max_step_flops:
        # a deep valid network (3D) costs seconds per step even for its smallest output on a CPU:
        # then allow twice that, which buys far more output voxels (the context dominates the cost)
        max_step_flops = 2.0 * smallest_step
    patch, fits = _fit_patch(median_shape, spec, cost, budget, 2, max_step_flops)
    single, single_fits = _fit_patch(median_shape, spec, cost, budget, 1, max_step_flops)
    batch = 2
    # Batch 2 (nnU-Net) unless it fits only with patches so small that one larger patch
    # supervises more voxels per step: a valid network's context makes small outputs costly.
    if not fits or (single_fits and 2 * math.prod(patch) < math.prod(single)):
        patch, fits, batch = single, single_fits, 1
    input_size = _input_size(patch, spec)
    if fits and batch == 2 and _device_kind(device) == "gpu":
        voxels = sum(math.prod(_median_like(rec, spacing)) for rec in fingerprint["scans"])
        while (
            cost.memory_bytes(input_size, batch + 1) <= budget
            and (batch + 1) * math.prod(patch) <= BATCH_DATASET_FRACTION * voxels
        ):
            batch += 1
    memory_mb = cost.memory_bytes(input_size, batch) / 2**20
    plan["patch_size"] = patch
    plan["batch_size"] = batch
    crop = "foreground-cropped, " if settings.get("crop_foreground") else ""
    comments["patch_size"] = (
        f"network OUTPUT patch in voxels (input {_fmt(input_size)} with the valid network's context); "
        f"the legal size nearest the median {crop}resampled image shape {_fmt(median_shape)}"
        + ("" if patch == _fit_patch(median_shape, spec, cost, math.inf, batch)[0] else
           ", shrunk along the axis largest relative to that shape until the step fits the memory budget "
           f"and, on a CPU, about {CPU_STEP_TARGET_S:g} s per step")
        + f"; {settings['preset']} preset, base width {width}, {net_depth} poolings"
    )  # fmt: skip
    comments["batch_size"] = (
        f"{batch} patch(es) per step: training needs about {memory_mb:.0f} MiB of the "
        f"{memory_budget_mb:.0f} MiB budget ({budget_source}, {device}); nnU-Net keeps >= 2 when it fits, "
        "here unless two patches that fit would supervise fewer voxels per step than one larger patch"
        + ("" if fits else "; WARNING: even the smallest legal patch exceeds the budget")
    )
    if not fits:
        log.warning(
            "plan: the smallest legal patch %s needs %.0f MiB, more than the %.0f MiB budget",
            patch, memory_mb, memory_budget_mb,
        )  # fmt: skip
    plan["base_width"] = width
    plan["depth"] = net_depth
    comments["depth"] = f"network poolings ({depth_source})"
    # Measured on CPU plans (batch 1, docs/BENCHMARKS.md "Model quality"): instance norm (nnU-Net's
    # choice) kept the 3D demo's validation Dice from dipping early but ended 0.02-0.04 lower in
    # test Dice than the 3D U-Net's batch norm on both the 3D demo and MR-like data, so the plan
    # keeps the preset's normalisation; --norm instance is one override away.
    preset_norm = str(PRESETS[settings["preset"]].kwargs.get("norm", "none"))
    plan["norm"] = preset_norm
    comments["norm"] = (
        f"the {settings['preset']} preset's normalisation ({preset_norm})"
        + ("; --norm instance trades 0.02-0.04 test Dice for smoother early epochs (measured)"
           if preset_norm == "batch" else "")
    )  # fmt: skip
    comments["base_width"] = f"network base width the patch and batch were sized for ({width_source})"

    plan["pos"], plan["neg"] = 1, 2
    comments["pos"] = comments["neg"] = (
        "foreground oversampling: each patch is centred on a labelled voxel (label > 0) with "
        "probability pos/(pos+neg) = 1/3 and on a background voxel otherwise, as nnU-Net centres a "
        "third of its patches on foreground; with several foreground classes that third is split "
        "evenly over the classes (MONAI RandCropByLabelClassesd), as nnU-Net picks a class first"
    )

    step_s = None if throughput is None else STEP_OVERHEAD * cost.step_flops(input_size, batch) / throughput
    n_val = int(fingerprint.get("split_counts", {}).get("val", 0))
    if _device_kind(device) == "gpu" or step_s is None:
        iterations = GPU_ITERATIONS
        comments["iterations_per_epoch"] = (
            f"{iterations} optimiser steps per epoch on {device} (nnU-Net), whatever the number of scans"
        )
        val_interval = 1
        comments["val_interval"] = "validate every epoch"
    else:
        low, high = CPU_ITERATIONS_RANGE
        iterations = int(min(max(round(CPU_EPOCH_SECONDS / step_s), low), high))
        epoch_s = iterations * step_s
        comments["iterations_per_epoch"] = (
            f"{iterations} optimiser steps per epoch, whatever the number of scans: an estimated "
            f"{step_s:.2f} s per step on {device} ({throughput / 1e9:.0f} GFLOP/s {throughput_source}) "
            "makes an "
            f"epoch about {epoch_s / 60:.1f} min (CPU target {CPU_EPOCH_SECONDS:.0f} s, "
            f"{low}..{high} steps)"
            + (
                f"; steps this slow leave few updates per hour: a smaller --base-width (now {width}) "
                "plans faster steps"
                if step_s > SLOW_CPU_STEP_S
                else ""
            )
        )
        margin = [(i - o) for i, o in zip(input_size, patch)]
        val_voxels = math.prod(m + s for m, s in zip(margin, median_shape))
        val_s = STEP_OVERHEAD * n_val * cost.forward_flops_per_voxel * val_voxels / throughput
        val_interval = max(1, math.ceil(val_s / (CPU_VALIDATION_SHARE * epoch_s))) if n_val else 1
        comments["val_interval"] = (
            f"validate every {val_interval} epoch(s): {n_val} validation scan(s) take an estimated "
            f"{val_s:.0f} s, kept under {CPU_VALIDATION_SHARE:.0%} of the training time"
        )
    plan["iterations_per_epoch"] = iterations
    plan["val_interval"] = val_interval
    plan["prefetch_batches"] = PREFETCH_BATCHES
    comments["prefetch_batches"] = (
        f"{PREFETCH_BATCHES} training batch prepared in a background thread while the network trains on "
        "the current one (MONAI ThreadDataLoader over the cached deterministic prefix), so patch "
        "sampling and augmentation overlap the step instead of adding to it; the batches are the "
        "plain loader's, bit for bit. On the CPU plans of the demo data this cut the data wait from "
        "8-17% of a step to under 0.5% (2-core CPU, 1 and 2 threads); a worker process (num_workers) "
        "hid less of it, every batch crossing a process boundary (docs/BENCHMARKS.md, section 3). "
        "0 turns the thread off"
    )

    plan["training_command"] = training_command(bundle_path, plan_path, fingerprint["manifest"])
    comments["training_command"] = "run this to train with the plan (explicit --ids after it still win)"
    plan["_comments_"] = comments
    plan["_planned_with_"] = {
        "device": str(device),
        "memory_budget_mb": float(memory_budget_mb),
        "estimated_memory_mb": memory_mb,
        "fits_budget": fits,
        "estimated_step_s": step_s,
        "input_patch_size": list(input_size),
        "median_shape": median_shape,
        "modality": fingerprint["modality"],
        "modality_source": fingerprint["modality_source"],
        "preset": settings["preset"],
        "base_width": width,
        "channels": channels,
        "training_scans": len(fingerprint["scans"]),
    }
    return plan


def _median_like(rec: dict[str, Any], spacing: Sequence[float]) -> list[float]:
    return [s * sp / t for s, sp, t in zip(rec["shape"], rec["spacing"], spacing)]


def training_command(bundle_path: str | Path, plan_path: str | Path, manifest: str | Path) -> str:
    """The ``python -m monai.bundle run training`` command line that trains with a plan file."""
    bundle = str(bundle_path).rstrip("/")
    configs = f"['{bundle}/configs/training.json','{plan_path}']"
    # MONAI parses the list from the argument text; double quotes read best where they are safe
    quoted = f'"{configs}"' if not set(configs) & set('"$`\\') else shlex.quote(configs)
    return " ".join(
        [
            "python -m monai.bundle run training --workflow_name unet_med.bundle.UNetMedWorkflow",
            f"--meta_file {shlex.quote(bundle + '/configs/metadata.json')}",
            f"--config_file {quoted}",
            f"--bundle_root {shlex.quote(bundle)}",
            f"--logging_file {shlex.quote(bundle + '/configs/logging.conf')}",
            f"--manifest {shlex.quote(str(manifest))}",
        ]
    )


# --------------------------------------------------------------------------- files


def write_plan(plan: dict[str, Any], path: str | Path) -> Path:
    """Write ``plan`` as indented JSON, atomically (never a half file); return the path."""
    from unet_med.atomic_files import atomic_output

    path = Path(path)
    text = json.dumps(plan, indent=2) + "\n"  # serialise first: a failure leaves no file at all
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return path


def read_plan(path: str | Path) -> dict[str, Any]:
    """Read a plan file; :class:`PlanError` naming it when it is not a plan."""
    path = Path(path)
    try:
        plan = json.loads(path.read_text())
    except FileNotFoundError:
        raise PlanError(f"{path}: plan file not found") from None
    except ValueError as exc:
        raise PlanError(f"{path}: not a JSON plan file ({exc})") from None
    missing = [
        k
        for k in ("plan_version", "bundle", "manifest_sha256")
        if not isinstance(plan, dict) or k not in plan
    ]
    if missing:
        raise PlanError(f"{path}: not a plan file (missing {missing}); make one with `unet-med plan`")
    return plan


def check_plan(plan: dict[str, Any] | str | Path, *, bundle_name: str | Path, manifest: str | Path) -> None:
    """Refuse a plan written for another bundle or another manifest (hash mismatch).

    Args:
        plan: a plan dict or plan file.
        bundle_name: the bundle about to train (a name or bundle folder).
        manifest: the manifest about to be trained on.

    Raises:
        PlanError: naming both bundles, or both manifests with their SHA-256.
    """
    from unet_med.data.manifest import manifest_sha256

    source = f"plan {plan}" if not isinstance(plan, dict) else "the plan"
    plan = read_plan(plan) if not isinstance(plan, dict) else plan
    if int(plan.get("plan_version", 0)) > PLAN_VERSION:
        raise PlanError(
            f"{source} has plan_version {plan['plan_version']}; this unet-med reads up to {PLAN_VERSION}"
        )
    name = _bundle_name(bundle_name)
    if plan.get("bundle") != name:
        raise PlanError(
            f"{source} was made for bundle {plan.get('bundle')!r}, not for bundle {name!r}; "
            f"make one for it with `unet-med plan MANIFEST --bundle bundles/{name}`"
        )
    sha = manifest_sha256(manifest)
    if plan.get("manifest_sha256") != sha:
        raise PlanError(
            f"{source} was made for manifest {plan.get('manifest') or '(another manifest)'} (sha256 "
            f"{str(plan.get('manifest_sha256'))[:12]}...), not for manifest {Path(manifest).resolve()} "
            f"(sha256 {sha[:12]}...); the data changed: plan again with `unet-med plan {manifest}`"
        )
