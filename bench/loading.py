"""Loading benchmark: seconds per volume to load a CT-like scan stored as NIfTI (``.nii``,
``.nii.gz``) and as a DICOM series, and to preprocess it (orientation, resampling to the 3D
bundle's spacing, HU window); and the fraction of a training step spent waiting for data with
the bundles' own loader and cache settings.

* Load: :func:`unet_med.data.loading.load_image` (MONAI ``LoadImage`` with the project's reader) of
  one volume written three ways from the same array; preprocessing:
  :func:`unet_med.transforms.preprocessing_transforms` with ``load=False`` as the bundles
  configure it. The formats are timed side by side, median of ``--repeats``.
* Data wait: each bundle's ``train#dataloader``, ``network``, ``loss``, ``optimizer`` and
  ``prepare_batch`` are built from its ``training.json`` (``monai.bundle.ConfigParser``) on its own
  demo dataset (``demo_n`` scans of ``demo_size``) with only ``manifest``, ``output_dir`` and
  ``device`` overridden, as a training started with only ``--manifest`` builds them: the plan
  made on first use sets base width, depth, patch, batch and the loader (``--quick``: base width
  8 / 4 instead of the plan's, fewer scans). A plain loop then times ``next(loader)`` (waiting
  for data) against forward, loss, backward and optimiser step, cycling the loader as Ignite does
  with ``epoch_length`` (one iterator across epochs, a new one when it runs out). Loader variants
  (:data:`WAIT_VARIANTS`: no prefetch as before, one worker process, the plan's choice) are timed
  side by side in blocks, after a warm-up round; the cache build time is reported separately
  (paid once per run).

Usage: ``.venv/bin/python -m bench.loading [--quick] [--section all|load|data-wait]``; run it with
``OMP_NUM_THREADS=1`` for the figures in docs/BENCHMARKS.md (this machine is shared).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.measure import emit_figures, format_table, interleaved_seconds, machine_description

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def write_volume_formats(size: Sequence[int], folder: Path) -> dict[str, Any]:
    """One CT-like int16 volume with an oblique, anisotropic affine written as ``.nii``,
    ``.nii.gz`` and a DICOM series; returns ``{format: path or folder}``."""
    import nibabel as nib

    from unet_med.data.demo import demo_volume_3d
    from unet_med.dicom.synthetic import write_dicom_series

    hu, _ = demo_volume_3d(np.random.default_rng(0), tuple(int(s) for s in size))
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    affine[:3, 3] = (-200.0, -180.0, 50.0)
    paths: dict[str, Any] = {}
    for suffix in (".nii", ".nii.gz"):
        path = folder / f"volume{suffix}"
        nib.save(nib.Nifti1Image(hu, affine), str(path))
        paths[suffix] = path
    dicom_dir = folder / "dicom"
    write_dicom_series(hu, affine, dicom_dir)
    paths["dicom"] = dicom_dir
    return paths


def load_and_preprocess_seconds(paths: dict[str, Any], repeats: int) -> list[dict[str, Any]]:
    """Median load and preprocessing seconds per format (timed side by side)."""
    from unet_med.data.loading import load_image
    from unet_med.transforms import preprocessing_transforms

    preprocess = preprocessing_transforms(
        ("image",), load=False, spatial_dims=3, axcodes="RAS", spacing=(1.5, 1.5, 2.5), intensity="ct"
    )
    loaded = {name: load_image(path) for name, path in paths.items()}
    load_s = interleaved_seconds({n: (lambda p=p: load_image(p)) for n, p in paths.items()}, repeats=repeats)
    prep_s = interleaved_seconds(
        {n: (lambda v=v: preprocess({"image": v.clone()})) for n, v in loaded.items()}, repeats=repeats
    )
    rows = []
    for name, path in paths.items():
        files = sorted(Path(path).iterdir()) if Path(path).is_dir() else [Path(path)]
        rows.append(
            dict(
                format=name,
                shape="x".join(map(str, loaded[name].shape[1:])),
                files=len(files),
                MB_on_disk=sum(f.stat().st_size for f in files) / 1e6,
                load_s=load_s[name],
                preprocess_s=prep_s[name],
                total_s=load_s[name] + prep_s[name],
            )
        )
    return rows


class TrainingStream:
    """One bundle training's data path and step, built from its ``training.json`` as a training
    started with only ``--manifest`` builds them (the plan made on first use applies), with the
    ids in ``overrides`` replaced and MONAI's ``set_determinism(seed)`` first, as the training's
    initialisation does; :meth:`run` times ``next(loader)`` against the step."""

    def __init__(
        self, bundle: str, manifest: Path, output_dir: Path, overrides: dict[str, Any], seed: int = 0
    ):
        from monai.bundle import ConfigParser
        from monai.utils import set_determinism

        root = BUNDLES / bundle
        parser = ConfigParser()
        parser.read_meta(str(root / "configs" / "metadata.json"))
        parser.read_config(str(root / "configs" / "training.json"))
        parser.update(
            {
                "bundle_root": str(root),
                "manifest": str(manifest),
                "output_dir": str(output_dir),
                "device": "$torch.device('cpu')",
                **overrides,
            }
        )
        # every variant starts from the same weights and the same transform random streams
        set_determinism(seed=seed)
        start = time.perf_counter()
        self.loader = parser.get_parsed_content("train#dataloader")
        self.cache_build_s = time.perf_counter() - start
        self.network = parser.get_parsed_content("network")
        self.loss = parser.get_parsed_content("loss")
        self.optimizer = parser.get_parsed_content("optimizer")
        self.prepare = parser.get_parsed_content("train#trainer#prepare_batch")
        self.settings = {
            k: parser.get_parsed_content(k)
            for k in (
                "base_width",
                "depth",
                "patch_size",
                "input_patch_size",
                "batch_size",
                "iterations_per_epoch",
            )
        }
        self.settings["loader"] = type(self.loader).__name__
        self.settings["num_workers"] = self.loader.num_workers
        self.iterator = None
        self.waits: list[float] = []
        self.steps: list[float] = []

    def _next_batch(self) -> Any:
        # as Ignite with epoch_length: one iterator across epochs, a new one when it runs out
        if self.iterator is None:
            self.iterator = iter(self.loader)
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.loader)
            return next(self.iterator)

    def run(self, iterations: int, timed: bool = True) -> None:
        """``iterations`` training iterations; the first is not timed (in a side-by-side run a
        background loader may have prepared it while another variant ran)."""
        self.network.train()
        device = torch.device("cpu")
        for i in range(iterations):
            t0 = time.perf_counter()
            batch = self._next_batch()
            t1 = time.perf_counter()
            inputs, targets = self.prepare(batch, device, False)
            self.optimizer.zero_grad(set_to_none=True)
            self.loss(self.network(inputs), targets).mean().backward()
            self.optimizer.step()
            t2 = time.perf_counter()
            if timed and i > 0:
                self.waits.append(t1 - t0)
                self.steps.append(t2 - t1)


def data_wait_rows(
    bundle: str,
    manifest: Path,
    output_dir: Path,
    variants: dict[str, dict[str, Any]],
    *,
    blocks: int,
    block_iterations: int,
) -> list[dict[str, Any]]:
    """Data wait of ``bundle``'s training under each variant (``{name: id overrides}``), timed
    side by side: ``blocks`` rounds, each running ``block_iterations`` iterations of every
    variant in turn (the first round is warm-up; the first iteration of each block is not timed)."""
    streams = {name: TrainingStream(bundle, manifest, output_dir, ov) for name, ov in variants.items()}
    for r in range(blocks + 1):
        for stream in streams.values():
            stream.run(block_iterations, timed=r > 0)
    rows = []
    for name, s in streams.items():
        wait, step = sum(s.waits), sum(s.steps)
        n = len(s.waits)
        rows.append(
            dict(
                bundle=bundle,
                variant=name,
                threads=torch.get_num_threads(),
                **{
                    k: ("x".join(map(str, v)) if isinstance(v, (list, tuple)) else v)
                    for k, v in s.settings.items()
                },
                cache_build_s=s.cache_build_s,
                timed_iterations=n,
                wait_s_per_iter=wait / n,
                step_s_per_iter=step / n,
                wall_s_per_iter=(wait + step) / n,
                median_wait_s=statistics.median(s.waits),
                wait_fraction=wait / (wait + step),
            )
        )
    return rows


# Loader variants timed side by side in the data-wait section (id overrides of training.json):
# the loader the bundles shipped before plans chose one (the step waits for each batch), one
# persistent worker process instead, and the bundle as a training runs it (the plan's choice).
WAIT_VARIANTS: dict[str, dict[str, Any]] = {
    "before: no prefetch": {"prefetch_batches": 0},
    "1 worker process": {
        "prefetch_batches": 0,
        "num_workers": 1,
        "train#dataloader#persistent_workers": True,
    },
    "planned": {},
}
WAIT_TAGS = {"before: no prefetch": "before", "1 worker process": "worker", "planned": "planned"}


def _bundle_demo(bundle: str) -> tuple[int, int, int]:
    """(dims, demo_n, demo_size) of a bundle's own demo dataset, from its training.json."""
    import json

    config = json.loads((BUNDLES / bundle / "configs" / "training.json").read_text())
    return int(config["spatial_dims"]), int(config["demo_n"]), int(config["demo_size"])


def data_wait_section(folder: Path, quick: bool, blocks: int, block_iterations: int) -> list[dict[str, Any]]:
    """Data-wait rows of both bundles on their demo datasets: at the planned defaults (the plan a
    training started with only ``--manifest`` makes on this machine), or at the quick widths."""
    from unet_med.data.demo import generate_demo_dataset

    rows = []
    for bundle, quick_width in (("unet2d_paper", 8), ("unet3d", 4)):
        dims, n, size = _bundle_demo(bundle)
        manifest = generate_demo_dataset(
            folder / f"demo{dims}d", dims=dims, n=min(n, 12) if quick else n, size=size, seed=0
        )
        width = {"base_width": quick_width} if quick else {}
        variants = {name: {**width, **ov} for name, ov in WAIT_VARIANTS.items()}
        bundle_rows = data_wait_rows(
            bundle,
            manifest,
            folder / f"out{dims}d",
            variants,
            blocks=blocks,
            block_iterations=block_iterations,
        )
        print(format_table(bundle_rows), flush=True)
        rows += bundle_rows
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smaller volume and datasets; data wait at quick widths 8 (2D) / 4 (3D)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="load/preprocess repeats (median)")
    parser.add_argument(
        "--section",
        choices=("all", "load", "data-wait"),
        default="all",
        help="what to measure (default: all)",
    )
    parser.add_argument(
        "--blocks", type=int, default=None, help="data wait: timed rounds (default 6, quick 3)"
    )
    parser.add_argument(
        "--block-iterations", type=int, default=8, help="data wait: iterations per variant and round"
    )
    args = parser.parse_args(argv)
    quick = args.quick
    size = (256, 256, 64) if quick else (512, 512, 300)
    machine = machine_description()
    print("machine:", machine, flush=True)

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="unet-med-bench-") as tmp:
        folder = Path(tmp)
        if args.section in ("all", "load"):
            figures["volume"] = "x".join(map(str, size))
            paths = write_volume_formats(size, folder)
            rows = load_and_preprocess_seconds(paths, args.repeats)
            print(format_table(rows), flush=True)
            for row in rows:
                key = row["format"].lstrip(".").replace(".", "_")
                figures[f"load_s_{key}"] = row["load_s"]
                figures[f"preprocess_s_{key}"] = row["preprocess_s"]
                figures[f"load_MB_per_s_{key}"] = row["MB_on_disk"] / row["load_s"]
        if args.section in ("all", "data-wait"):
            blocks = args.blocks or (3 if quick else 6)
            wait_rows = data_wait_section(folder, quick, blocks, args.block_iterations)
            for row in wait_rows:
                tag = f"{row['bundle']}_{WAIT_TAGS[row['variant']]}"
                figures[f"data_wait_fraction_{tag}"] = row["wait_fraction"]
                figures[f"wall_s_per_iter_{tag}"] = row["wall_s_per_iter"]
                figures[f"base_width_{row['bundle']}"] = row["base_width"]
    figures["load_avg_1min_at_start"] = machine["load_avg_1min_at_start"]
    figures["load_avg_1min_at_end"] = round(os.getloadavg()[0], 2)
    figures["torch_threads"] = machine["torch_threads"]
    emit_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
