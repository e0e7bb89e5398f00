"""Whole-volume inference benchmark: ``OverlapTileInferer`` + the ``cicek3d`` valid U-Net against
``monai.inferers.sliding_window_inference`` + ``BasicUNet`` of matched width (features
``(w, 2w, 4w, 8w, 16w, w)``; the 3D U-Net's first convolution has ``w`` channels too).

* Comparison on one CT-like volume (``unet_med.data.demo.demo_volume_3d``, HU windowed to
  [-200, 400] and scaled by 1/200): ours at overlap 0 (the overlap-tile strategy needs none), 0.25
  and 0.5, MONAI at 0.25 and 0.5, all Gaussian-blended where they overlap. Wall time of the
  inference call, peak RSS of the process, mean Dice of the argmax against the volume's label.
* Inferer agreement with the same weights: MONAI's BasicUNet through both inferers (same window,
  overlap 0.5, Gaussian, on the smallest scaling volume):
  fraction of equal argmax voxels and the largest logit difference.
* Scaling: ours (overlap 0, default memory budget) and MONAI (overlap 0.5) on at least three volume
  sizes; time per voxel should stay flat once a volume holds several tiles (cost linear in
  voxels); below one tile the cost is that of one tile. The fitted exponent of time against voxels
  is reported; ``--memory-check`` gives a 512x512x300 point to compare with the per-tile time.

Every configuration runs in a fresh subprocess (so its peak RSS is its own: ``VmHWM`` of the
child) and the configurations of one repeat run one after another, so load from other work hits
them alike. The networks are trained briefly (``--train-steps``, Adam, random crops of the same
volume) so that Dice against the label means something; both get the same number of steps on
crops of about the same output size (32^3 for BasicUNet, whose batch norm needs a bottleneck of
more than one voxel; 28^3, a legal output size, for the valid network). This measures the
inferers, not generalisation.

On a GPU (``--device cuda``) both networks train and infer there; times are taken after
``torch.cuda.synchronize`` and the peak is the GPU's (``torch.cuda.max_memory_allocated``) as well
as the process's RSS. ``--eval-seed`` evaluates Dice on a held-out volume drawn with another seed
(same generator, other anatomy), ``--save-weights DIR`` keeps the trained weights and
``--weights DIR`` reuses them (no training), so networks trained on a GPU can be timed on a CPU.
``--patch-ours``/``--patch-monai`` set the training output patch of each network (MONAI users
usually train on their inference window).

Usage: ``.venv/bin/python -m bench.inference [--quick] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.measure import emit_figures, format_table, machine_description, peak_rss_gib

CLASSES = 3
HU_WINDOW = (-200.0, 400.0)


def build_network(kind: str, width: int, depth: int | None = None) -> torch.nn.Module:
    """``"ours"``: the cicek3d valid U-Net at ``base_width=width`` (``depth`` poolings, default the
    preset's three); ``"monai"``: BasicUNet with the same first width, batch norm and ReLU."""
    if kind == "ours":
        from unet_med.networks import create_unet

        return create_unet("cicek3d", base_width=width, out_channels=CLASSES, depth=depth)
    from monai.networks.nets import BasicUNet

    return BasicUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=CLASSES,
        features=(width, 2 * width, 4 * width, 8 * width, 16 * width, width),
        act=("relu", {"inplace": True}),
        norm=("batch", {"affine": True}),
    )


def make_volume(size: Sequence[int], folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write a CT-like volume (float32, windowed and scaled) and its label as ``.npy`` files."""
    from unet_med.data.demo import demo_volume_3d

    hu, label = demo_volume_3d(np.random.default_rng(seed), tuple(int(s) for s in size))
    image = (np.clip(hu, *HU_WINDOW) / 200.0).astype(np.float32)
    tag = "x".join(map(str, size))
    image_path, label_path = folder / f"image_{tag}.npy", folder / f"label_{tag}.npy"
    np.save(image_path, image)
    np.save(label_path, label)
    return image_path, label_path


def train_briefly(
    kind: str,
    width: int,
    image_path: Path,
    label_path: Path,
    steps: int,
    out_patch: int,
    weights_path: Path,
    seed: int = 0,
    device: str = "cpu",
    depth: int | None = None,
) -> float:
    """Adam on random crops whose network *output* is ``out_patch`` voxels per axis; saves the
    weights and returns the wall seconds spent."""
    from unet_med.networks.shapes import min_input_size

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_network(kind, width, depth).to(device)
    image = torch.from_numpy(np.load(image_path)).to(device)
    label = torch.from_numpy(np.load(label_path).astype(np.int64)).to(device)
    if kind == "ours":
        in_patch = min_input_size((out_patch,) * 3, net.spec)
        out = net.output_size(in_patch)
    else:
        in_patch = out = (out_patch,) * 3
    margin = [(i - o) // 2 for i, o in zip(in_patch, out)]
    padded = torch.nn.functional.pad(
        image[None, None], [m for m in margin[::-1] for _ in (0, 1)], mode="reflect"
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    start = time.perf_counter()
    for _ in range(steps):
        # half of the crops centred on foreground, so the small classes are seen
        if rng.random() < 0.5:
            fg = torch.nonzero(label > 0).cpu()
            centre = fg[int(rng.integers(len(fg)))].tolist()
            corner = [min(max(c - o // 2, 0), s - o) for c, o, s in zip(centre, out, label.shape)]
        else:
            corner = [int(rng.integers(0, s - o + 1)) for o, s in zip(out, label.shape)]
        x = padded[(0, slice(None), *(slice(c, c + i) for c, i in zip(corner, in_patch)))][None]
        y = label[tuple(slice(c, c + o) for c, o in zip(corner, out))][None]
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(x), y).backward()
        optimizer.step()
    _synchronize(device)
    net.eval()
    torch.save({k: v.cpu() for k, v in net.state_dict().items()}, weights_path)
    return time.perf_counter() - start


def _synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def mean_foreground_dice(pred: np.ndarray, label: np.ndarray) -> float:
    """Mean Dice over the foreground classes (``monai.metrics.compute_dice``; a class absent from
    both maps counts 1.0)."""
    from monai.metrics import compute_dice
    from monai.networks.utils import one_hot

    def classes(a: np.ndarray) -> torch.Tensor:
        return one_hot(torch.as_tensor(np.asarray(a, dtype=np.int64))[None, None], CLASSES)

    scores = compute_dice(classes(pred), classes(label), include_background=False, ignore_empty=False)
    return float(scores.mean())


def run_configuration(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run one inference configuration in this process (the child side) and return its figures."""
    from monai.inferers import sliding_window_inference

    from unet_med.inferers import OverlapTileInferer

    device = cfg.get("device", "cpu")
    net = build_network(cfg["network"], cfg["width"], cfg.get("depth"))
    net.load_state_dict(torch.load(cfg["weights"], map_location="cpu", weights_only=True))
    net.eval().to(device)
    image = torch.from_numpy(np.load(cfg["image"]))[None, None].to(device)
    label = np.load(cfg["label"])
    rss_before = peak_rss_gib()
    if device != "cpu":  # a warm-up call: CUDA context, kernel selection
        with torch.inference_mode():
            net(torch.zeros((1, 1, *_warmup_tile(net)), device=device))
        torch.cuda.reset_peak_memory_stats()
    _synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        if cfg["inferer"] == "overlap-tile":
            inferer = OverlapTileInferer(
                cfg.get("output_tile"),
                memory_budget_mb=None if cfg.get("output_tile") else cfg.get("budget_mb"),
                overlap=cfg["overlap"],
                blend_mode="gaussian" if cfg["overlap"] > 0 else "constant",
            )
            logits = inferer(image, net)
            plan = inferer.plan(image.shape[2:], net, sw_device=image.device)
            tiles = plan.num_tiles
            window = "x".join(map(str, plan.input_tile))
        else:
            roi = (cfg["roi"],) * 3
            logits = sliding_window_inference(
                image, roi, cfg.get("sw_batch_size", 1), net, overlap=cfg["overlap"], mode="gaussian"
            )
            # MONAI's scan: step int(roi * (1 - overlap)), windows until the last one reaches the end
            steps = [max(int(r * (1 - cfg["overlap"])), 1) for r in roi]
            tiles = math.prod(
                1 if n <= r else -(-(n - r) // st) + 1 for n, r, st in zip(image.shape[2:], roi, steps)
            )
            window = "x".join(map(str, roi))
        pred = logits.argmax(1)[0].cpu().numpy()
    _synchronize(device)
    wall = time.perf_counter() - start
    result = dict(
        wall_s=wall,
        peak_gpu_gib=torch.cuda.max_memory_allocated() / 2**30 if device != "cpu" else None,
        peak_rss_gib=peak_rss_gib(),
        rss_before_gib=rss_before,
        dice=mean_foreground_dice(pred, label),
        tiles=tiles,
        window=window,
    )
    if cfg.get("save_logits"):
        np.save(cfg["save_logits"], logits.cpu().numpy())
    return result


def _warmup_tile(net: torch.nn.Module) -> tuple[int, ...]:
    """The smallest legal input tile of ``net`` (32^3 for networks without a shape spec)."""
    from unet_med.inferers import network_spec
    from unet_med.networks.shapes import min_input_size

    spec = network_spec(net)
    return (32,) * 3 if spec is None else min_input_size((8,) * 3, spec)


def run_in_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run a configuration in a fresh Python process and return its figures (in this process
    when ``cfg["in_process"]``: GPU runs, whose peak memory is reset per configuration)."""
    if cfg.get("in_process"):
        return run_configuration(cfg)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.inference", "--child", json.dumps(cfg)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if proc.returncode != 0:
        raise RuntimeError(f"configuration {cfg} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _size_tag(size: Sequence[int]) -> str:
    return "x".join(map(str, size))


def memory_check(size: tuple[int, ...], width: int, budget_mb: float) -> int:
    """Peak RSS and wall time of ``OverlapTileInferer`` (overlap 0) on one CT-sized volume, in a
    fresh process; the weights are untrained (memory and time do not depend on them)."""
    machine = machine_description()
    print("machine:", machine, flush=True)
    with tempfile.TemporaryDirectory(prefix="unet-med-bench-") as tmp:
        folder = Path(tmp)
        image, label = make_volume(size, folder)
        weights = folder / "ours.pt"
        torch.save(build_network("ours", width).state_dict(), weights)
        cfg = dict(
            network="ours",
            width=width,
            weights=str(weights),
            image=str(image),
            label=str(label),
            overlap=0.0,
            size=_size_tag(size),
            inferer="overlap-tile",
            budget_mb=budget_mb,
        )
        result = run_in_child(cfg)
    row = dict(config="ours@0", size=_size_tag(size), voxels_M=math.prod(size) / 1e6, **result)
    print(format_table([row]))
    emit_figures(
        {
            "size": _size_tag(size),
            "width": width,
            "budget_mb": budget_mb,
            "ours_overlap0_peak_rss_gib": result["peak_rss_gib"],
            "rss_before_inference_gib": result["rss_before_gib"],
            "ours_overlap0_wall_s": result["wall_s"],
            "tiles": result["tiles"],
            "load_avg_1min_at_start": machine["load_avg_1min_at_start"],
        }
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small volume and width")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=None, help="first-level width of both networks")
    parser.add_argument("--size", type=int, nargs=3, default=None, help="comparison volume (voxels)")
    parser.add_argument(
        "--scaling-sizes",
        type=str,
        default=None,
        help="volumes for the scaling table, e.g. 64x64x32,96x96x48,128x128x64",
    )
    parser.add_argument("--roi", type=int, default=None, help="MONAI window (voxels per axis)")
    parser.add_argument(
        "--budget-mb", type=float, default=None, help="inferer budget (default: device's)"
    )
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1, help="timed repeats per configuration (median)")
    parser.add_argument("--in-process", action="store_true", help="no child processes (GPU runs)")
    parser.add_argument("--depth", type=int, default=None, help="ours: poolings (default: cicek3d's 3)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda: where both networks train and infer")
    parser.add_argument("--eval-seed", type=int, default=0, help="comparison volume seed (0: training)")
    parser.add_argument("--patch-ours", type=int, default=28, help="ours: training output patch")
    parser.add_argument("--patch-monai", type=int, default=32, help="training patch of BasicUNet")
    parser.add_argument("--sw-batch-size", type=int, default=1, help="MONAI windows per network call")
    parser.add_argument("--save-weights", type=Path, default=None, help="keep trained weights here")
    parser.add_argument("--weights", type=Path, default=None, help="ours.pt + monai.pt: no training")
    parser.add_argument(
        "--memory-check",
        action="store_true",
        help="only ours at overlap 0 on --size (default 512 512 300), untrained weights: peak RSS and time",
    )
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_configuration(json.loads(args.child))), flush=True)
        return 0

    if args.memory_check:
        return memory_check(tuple(args.size or (512, 512, 300)), args.width or 4, args.budget_mb)
    quick = args.quick
    width = args.width or 4
    size = tuple(args.size or ((128, 128, 96) if quick else (256, 256, 128)))
    roi = args.roi or (64 if quick else 96)
    steps = args.train_steps if args.train_steps is not None else (10 if quick else 60)
    scaling = (
        [tuple(int(v) for v in s.split("x")) for s in args.scaling_sizes.split(",")]
        if args.scaling_sizes
        else (
            [(64, 64, 32), (96, 96, 48), (128, 128, 64)] if quick else [(128, 128, 64), (192, 192, 96), size]
        )
    )
    machine = machine_description()
    print("machine:", machine, flush=True)

    with tempfile.TemporaryDirectory(prefix="unet-med-bench-") as tmp:
        folder = Path(tmp)
        volumes = {tuple(s): make_volume(s, folder) for s in {size, *scaling}}
        training_volume = volumes[size]
        if args.eval_seed:
            (folder / "eval").mkdir()
            volumes[size] = make_volume(size, folder / "eval", seed=args.eval_seed)
        weights = {}
        train_s = {}
        for kind in ("ours", "monai"):
            if args.weights:
                weights[kind] = args.weights / f"{kind}.pt"
                continue
            weights[kind] = folder / f"{kind}.pt"
            patch = args.patch_ours if kind == "ours" else args.patch_monai
            train_s[kind] = train_briefly(
                kind, width, *training_volume, steps, patch, weights[kind],
                device=args.device, depth=args.depth,
            )
            if args.save_weights:
                args.save_weights.mkdir(parents=True, exist_ok=True)
                torch.save(torch.load(weights[kind], weights_only=True), args.save_weights / f"{kind}.pt")
        if train_s:
            print(
                f"trained both networks for {steps} steps on {args.device}: "
                + ", ".join(f"{k} {v:.1f} s" for k, v in train_s.items()),
                flush=True,
            )

        def config(kind: str, overlap: float, vol: tuple[int, ...], **extra: Any) -> dict[str, Any]:
            image, label = volumes[vol]
            base = dict(
                network=kind,
                width=width,
                weights=str(weights[kind]),
                image=str(image),
                label=str(label),
                overlap=overlap,
                size=_size_tag(vol),
                device=args.device,
                depth=args.depth,
                in_process=args.in_process,
            )
            if kind == "ours":
                base.update(inferer="overlap-tile", budget_mb=args.budget_mb)
            else:
                base.update(inferer="sliding-window", roi=roi, sw_batch_size=args.sw_batch_size)
            base.update(extra)
            return base

        comparison = {
            "ours@0": config("ours", 0.0, size),
            "ours@0.25": config("ours", 0.25, size),
            "ours@0.5": config("ours", 0.5, size),
            "monai@0.25": config("monai", 0.25, size),
            "monai@0.5": config("monai", 0.5, size),
        }
        # the same BasicUNet weights through both inferers, on the same window
        small = min(scaling, key=math.prod)  # the same BasicUNet weights through both inferers
        agreement = {
            "basicunet-through-ours@0.5": config(
                "monai",
                0.5,
                small,
                inferer="overlap-tile",
                output_tile=roi,
                save_logits=str(folder / "a.npy"),
            ),
            "basicunet-through-monai@0.5": config("monai", 0.5, small, save_logits=str(folder / "b.npy")),
        }
        scaling_cfgs = {}
        for vol in scaling:
            if vol == size:
                continue
            scaling_cfgs[f"ours@0 {_size_tag(vol)}"] = config("ours", 0.0, vol)
            scaling_cfgs[f"monai@0.5 {_size_tag(vol)}"] = config("monai", 0.5, vol)

        all_cfgs = {**comparison, **agreement, **scaling_cfgs}
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in all_cfgs}
        for _ in range(args.repeats):
            for name, cfg in all_cfgs.items():
                results[name].append(run_in_child(cfg))
                print(f"  {name}: {results[name][-1]['wall_s']:.1f} s", flush=True)
        logits_a, logits_b = np.load(folder / "a.npy"), np.load(folder / "b.npy")

    def summary(name: str) -> dict[str, Any]:
        runs = results[name]
        wall = statistics.median(r["wall_s"] for r in runs)
        cfg = all_cfgs[name]
        return dict(
            config=name,
            size=cfg["size"],
            voxels_M=math.prod(int(v) for v in cfg["size"].split("x")) / 1e6,
            window=runs[0]["window"],
            tiles=runs[0]["tiles"],
            wall_s=wall,
            s_per_Mvox=wall / (math.prod(int(v) for v in cfg["size"].split("x")) / 1e6),
            peak_rss_gib=max(r["peak_rss_gib"] for r in runs),
            peak_gpu_gib=runs[0]["peak_gpu_gib"],
            rss_before_gib=max(r["rss_before_gib"] for r in runs),
            dice=runs[0]["dice"],
        )

    rows = {name: summary(name) for name in all_cfgs}
    print(
        f"\ncomparison on {_size_tag(size)}, width {width}, MONAI window {roi}^3, "
        f"OverlapTileInferer budget {args.budget_mb or 'of the device'} MiB"
    )
    print(format_table([rows[n] for n in (*comparison, *agreement)]))
    scaling_rows = []
    for name in ("ours@0", "monai@0.5"):
        for vol in scaling:
            key = name if vol == size else f"{name} {_size_tag(vol)}"
            scaling_rows.append(rows[key])
    print("\nscaling")
    print(
        format_table(
            scaling_rows,
            ["config", "size", "voxels_M", "tiles", "wall_s", "s_per_Mvox", "peak_rss_gib", "rss_before_gib"],
        )
    )

    def exponent(kind: str) -> float:
        pts = [(r["voxels_M"], r["wall_s"]) for r in scaling_rows if r["config"].startswith(kind)]
        x = np.log([p[0] for p in pts])
        y = np.log([p[1] for p in pts])
        return float(np.polyfit(x, y, 1)[0])

    agree = float((logits_a.argmax(1) == logits_b.argmax(1)).mean())
    figures: dict[str, Any] = {
        "size": _size_tag(size),
        "width": width,
        "depth_ours": args.depth,
        "device": args.device,
        "eval_seed": args.eval_seed,
        "monai_roi": roi,
        "monai_sw_batch_size": args.sw_batch_size,
        "infer_speedup_vs_monai_overlap0.5": rows["monai@0.5"]["wall_s"] / rows["ours@0"]["wall_s"],
        "infer_speedup_vs_monai_overlap0.25": rows["monai@0.25"]["wall_s"] / rows["ours@0"]["wall_s"],
        "infer_speedup_both_overlap0.5": rows["monai@0.5"]["wall_s"] / rows["ours@0.5"]["wall_s"],
        "infer_speedup_both_overlap0.25": rows["monai@0.25"]["wall_s"] / rows["ours@0.25"]["wall_s"],
        "ours_overlap0_wall_s": rows["ours@0"]["wall_s"],
        "monai_overlap0.5_wall_s": rows["monai@0.5"]["wall_s"],
        "ours_overlap0_peak_rss_gib": rows["ours@0"]["peak_rss_gib"],
        "monai_overlap0.5_peak_rss_gib": rows["monai@0.5"]["peak_rss_gib"],
        "ours_overlap0_dice": rows["ours@0"]["dice"],
        "ours_overlap0.5_dice": rows["ours@0.5"]["dice"],
        "monai_overlap0.5_dice": rows["monai@0.5"]["dice"],
        "same_weights_argmax_agreement": agree,
        "same_weights_max_abs_logit_diff": float(np.abs(logits_a - logits_b).max()),
        "scaling_time_exponent_ours": exponent("ours@0"),
        "scaling_time_exponent_monai": exponent("monai@0.5"),
        "train_steps": 0 if args.weights else steps,
        "train_patch_ours": args.patch_ours,
        "train_patch_monai": args.patch_monai,
        "load_avg_1min_at_start": machine["load_avg_1min_at_start"],
    }
    emit_figures(figures)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    raise SystemExit(main())
