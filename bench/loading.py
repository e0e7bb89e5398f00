"""Loading benchmark: seconds per volume to load a CT-like scan stored as NIfTI (``.nii``,
``.nii.gz``) and as a DICOM series, and to preprocess it (orientation, resampling to the 3D
bundle's spacing, HU window); and the fraction of a training step spent waiting for data with
the bundles' own DataLoader and cache settings.

* Load: :func:`unet_med.data.loading.load_image` (MONAI ``LoadImage`` with the project's reader) of
  one volume written three ways from the same array; preprocessing:
  :func:`unet_med.transforms.preprocessing_transforms` with ``load=False`` as the bundles
  configure it. The formats are timed side by side, median of ``--repeats``.
* Data wait: the bundle's ``train#dataloader``, ``network``, ``loss``, ``optimizer`` and
  ``prepare_batch`` are built from its ``training.json`` (``monai.bundle.ConfigParser``, only
  ``manifest``, ``output_dir``, ``device``, ``base_width`` and ``epochs`` overridden) on a demo
  dataset; a plain loop then times ``next(loader)`` (waiting for data) against forward, loss,
  backward and optimiser step, after the cache is built (the cache build time is reported
  separately: it is paid once per run).

Usage: ``.venv/bin/python -m bench.loading [--quick]``.
"""

from __future__ import annotations

import argparse
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


def data_wait_fraction(
    bundle: str, manifest: Path, output_dir: Path, base_width: int | None, epochs: int
) -> dict:
    """Run ``epochs`` epochs of the bundle's training data path and step; return the seconds
    spent waiting for batches and in steps (epochs after the first, whose cache is warm)."""
    from monai.bundle import ConfigParser

    root = BUNDLES / bundle
    parser = ConfigParser()
    parser.read_meta(str(root / "configs" / "metadata.json"))
    parser.read_config(str(root / "configs" / "training.json"))
    overrides = {
        "bundle_root": str(root),
        "manifest": str(manifest),
        "output_dir": str(output_dir),
        "device": "$torch.device('cpu')",
        "epochs": epochs,
    }
    if base_width is not None:
        overrides["base_width"] = base_width
    parser.update(overrides)
    start = time.perf_counter()
    loader = parser.get_parsed_content("train#dataloader")
    cache_s = time.perf_counter() - start
    network = parser.get_parsed_content("network")
    loss_fn = parser.get_parsed_content("loss")
    optimizer = parser.get_parsed_content("optimizer")
    prepare = parser.get_parsed_content("train#trainer#prepare_batch")
    settings = {k: parser.get_parsed_content(k) for k in ("num_workers", "cache", "batch_size", "base_width")}
    network.train()
    waits: list[list[float]] = []
    steps: list[list[float]] = []
    for _ in range(epochs):
        waits.append([])
        steps.append([])
        iterator = iter(loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                break
            t1 = time.perf_counter()
            inputs, targets = prepare(batch, torch.device("cpu"), False)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(network(inputs), targets).mean()
            loss.backward()
            optimizer.step()
            t2 = time.perf_counter()
            waits[-1].append(t1 - t0)
            steps[-1].append(t2 - t1)
    warm_wait = sum(sum(w) for w in waits[1:])
    warm_step = sum(sum(s) for s in steps[1:])
    return dict(
        bundle=bundle,
        **settings,
        iterations=sum(len(w) for w in waits),
        cache_build_s=cache_s,
        first_epoch_wait_s=sum(waits[0]),
        wait_s_per_iter=warm_wait / max(1, sum(len(w) for w in waits[1:])),
        step_s_per_iter=warm_step / max(1, sum(len(s) for s in steps[1:])),
        median_wait_s=statistics.median(x for w in waits[1:] for x in w),
        wait_fraction=warm_wait / (warm_wait + warm_step),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller volume, widths and datasets")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    quick = args.quick
    size = (256, 256, 64) if quick else (512, 512, 300)
    machine = machine_description()
    print("machine:", machine, flush=True)

    from unet_med.data.demo import generate_demo_dataset

    figures: dict[str, Any] = {"volume": "x".join(map(str, size))}
    with tempfile.TemporaryDirectory(prefix="unet-med-bench-") as tmp:
        folder = Path(tmp)
        paths = write_volume_formats(size, folder)
        rows = load_and_preprocess_seconds(paths, args.repeats)
        print(format_table(rows))
        for row in rows:
            key = row["format"].lstrip(".").replace(".", "_")
            figures[f"load_s_{key}"] = row["load_s"]
            figures[f"preprocess_s_{key}"] = row["preprocess_s"]
            figures[f"load_MB_per_s_{key}"] = row["MB_on_disk"] / row["load_s"]

        wait_rows = []
        for bundle, dims, n, width in (
            ("unet2d_paper", 2, 12 if quick else 30, 8 if quick else None),
            ("unet3d", 3, 6 if quick else 12, 4 if quick else None),
        ):
            manifest = generate_demo_dataset(folder / f"demo{dims}d", dims=dims, n=n, seed=0)
            wait_rows.append(
                data_wait_fraction(bundle, manifest, folder / f"out{dims}d", width, 3 if quick else 4)
            )
        print(format_table(wait_rows))
        for row in wait_rows:
            figures[f"data_wait_fraction_{row['bundle']}"] = row["wait_fraction"]
            figures[f"step_s_{row['bundle']}"] = row["step_s_per_iter"]
            figures[f"base_width_{row['bundle']}"] = row["base_width"]
    figures["load_avg_1min_at_start"] = machine["load_avg_1min_at_start"]
    emit_figures(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
