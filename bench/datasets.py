"""Seeded synthetic 3D datasets unlike the demo, for the self-configuration benchmarks of
``bench/quality.py`` (issue 11): does ``unet-med plan`` pick the right normalisation and spacing,
and does a default training reach a good Dice on them?

- ``"mr"``: MR-like T1 head volumes, 1 mm isotropic, intensities 0-300 in arbitrary units (no
  Hounsfield meaning). Labels: 1 ``grey_matter`` (an outer ring of brain tissue) and 2
  ``white_matter`` (the inner blob, brighter, as in T1). Each scan has a smooth multiplicative
  bias field, its own contrast (all intensities scaled by a random factor 0.7-1.3) and Rician
  noise (air is small but not zero), and - what breaks a whole-volume z-score - a field of view
  that varies from tight around the head to much background (64-96 voxels per axis).
- ``"ct_aniso"``: CT-like abdomen slabs in Hounsfield units (air -1000, fat -100, soft tissue
  0-80, bone), 0.7 x 0.7 x 5 mm voxels (96 x 96 x 16): the thick slices are averages of 1 mm
  slices, as a scanner's reconstruction is. Labels: 1 ``organ``, 2 ``lesion`` (hypodense).

Files are written as the demo's are (:mod:`unet_med.data.demo`): ``images/`` and ``labels/``
NIfTI files with rotated RAS affines, ``manifest.csv`` (``subject_id,image,label,split``, about
60/20/20 train/val/test) and the ``manifest.json`` sidecar with the label names. The sidecar has
no ``modality`` key: the planner has to tell MR from CT by the intensities. Each scan is drawn
from its own generator (``seed``, scan index), so the same arguments write the same files.

    python -m bench.datasets mr outputs/quality/data/mr --seed 0
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import ndimage

from unet_med.data.demo import assign_splits, rotated_scan_affine
from unet_med.data.writing import save_nifti, write_csv, write_json

__all__ = [
    "DATASETS",
    "MR_LABELS",
    "CT_ANISO_LABELS",
    "CT_ANISO_SPACING",
    "mr_head_volume",
    "ct_aniso_volume",
    "generate_dataset",
]

MR_LABELS = {0: "background", 1: "grey_matter", 2: "white_matter"}
CT_ANISO_LABELS = {0: "background", 1: "organ", 2: "lesion"}
MR_SPACING = (1.0, 1.0, 1.0)
CT_ANISO_SPACING = (0.7, 0.7, 5.0)
CT_ANISO_SHAPE = (96, 96, 16)
MR_SHAPE_RANGE = (64, 96)
# T1-like tissue intensities (arbitrary units) before the per-scan contrast factor and bias field.
MR_TISSUE = {"scalp": 175.0, "skull": 25.0, "csf": 35.0, "grey": 105.0, "white": 160.0}
MR_MAX = 300.0


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Smooth random field of unit standard deviation (Gaussian-filtered white noise)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-8)


def mr_head_volume(rng: np.random.Generator, margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """One MR-like T1 head volume (int16, 0-300) and its label (uint8, :data:`MR_LABELS`).

    Args:
        rng: the scan's generator.
        margin_mm: background around the head per side (mm = voxels at 1 mm): the field of view
            is the head plus this margin, clipped to :data:`MR_SHAPE_RANGE` voxels per axis.
    """
    radii = np.array([27.0, 31.0, 27.0]) * rng.uniform(0.9, 1.05, 3)  # mm, (LR, AP, SI)
    lo, hi = MR_SHAPE_RANGE
    shape = tuple(int(np.clip(np.ceil(2 * r + 2 * margin_mm), lo, hi)) for r in radii)
    centre = np.array(shape) / 2.0 + rng.uniform(-0.4, 0.4, 3) * margin_mm
    grid = np.meshgrid(*[np.arange(s, dtype=float) for s in shape], indexing="ij")
    radial = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)))
    # irregular outlines: the head and the white-matter boundary wobble independently
    head_r = radial * (1.0 + 0.03 * _smooth_field(rng, shape, 10.0))
    inner_r = radial * (1.0 + 0.10 * _smooth_field(rng, shape, 5.0))
    white_edge = rng.uniform(0.5, 0.62)
    label = np.zeros(shape, np.uint8)
    label[head_r < 0.82] = 1
    label[(inner_r < white_edge) & (head_r < 0.78)] = 2
    t = MR_TISSUE
    image = np.zeros(shape)
    image[head_r < 1.0] = t["scalp"]
    image[head_r < 0.93] = t["skull"]
    image[head_r < 0.87] = t["csf"]
    image[label == 1] = t["grey"]
    image[label == 2] = t["white"]
    image = ndimage.gaussian_filter(image, 0.8)  # partial volume at tissue borders
    image *= rng.uniform(0.7, 1.3)  # scan-to-scan contrast
    image *= np.exp(0.12 * _smooth_field(rng, shape, 16.0))  # smooth bias field, about +-12%
    sigma = rng.uniform(2.5, 4.0)  # Rician noise: magnitude of a complex signal with Gaussian noise
    image = np.hypot(image + rng.normal(0.0, sigma, shape), rng.normal(0.0, sigma, shape))
    return np.clip(np.rint(image), 0, MR_MAX).astype(np.int16), label


def ct_aniso_volume(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One CT-like abdomen slab (int16 HU) of :data:`CT_ANISO_SHAPE` voxels at
    :data:`CT_ANISO_SPACING` mm, and its label (uint8, :data:`CT_ANISO_LABELS`).

    Drawn on a 1 mm slice grid; each 5 mm slice of the image is the mean of its five thin
    slices (partial volume) and its label the thin slice at its centre.
    """
    ni, nj, nk = CT_ANISO_SHAPE
    thick = int(round(CT_ANISO_SPACING[2]))
    fine = (ni, nj, nk * thick)
    # mm coordinates centred on the slab
    x, y, z = np.meshgrid(
        (np.arange(ni) - ni / 2) * CT_ANISO_SPACING[0],
        (np.arange(nj) - nj / 2) * CT_ANISO_SPACING[1],
        (np.arange(fine[2]) - fine[2] / 2) + 0.5,
        indexing="ij",
    )

    def ellipsoid(c: np.ndarray, r: np.ndarray) -> np.ndarray:
        return ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2

    body = ellipsoid(rng.uniform(-2, 2, 3), np.array([rng.uniform(27, 31), rng.uniform(22, 26), 1e4]))
    fat_mm = rng.uniform(2.5, 4.0)
    inner = body * (1.0 + fat_mm / 25.0) ** 2  # a subcutaneous fat ring of about fat_mm
    organ_c = np.array([rng.uniform(3, 9), rng.uniform(-2, 6), rng.uniform(-12, 12)])
    organ_r = np.array([rng.uniform(13, 17), rng.uniform(10, 13), rng.uniform(22, 32)])
    organ = ellipsoid(organ_c, organ_r)
    lesion_c = organ_c + rng.uniform(-0.4, 0.4, 3) * organ_r
    lesion_rad = rng.uniform(5.5, 8.0)
    lesion = ellipsoid(lesion_c, np.array([lesion_rad, lesion_rad, 1.3 * lesion_rad]))
    spine = ((x - rng.uniform(-1, 1)) / 5.0) ** 2 + ((y + rng.uniform(15, 17)) / 5.0) ** 2
    label = np.zeros(fine, np.uint8)
    label[(organ < 1) & (inner < 1) & (spine >= 1)] = 1
    label[(lesion < 1) & (label == 1)] = 2
    hu = np.full(fine, -1000.0)
    hu[body < 1] = -100.0  # fat
    hu[inner < 1] = rng.uniform(35, 50)  # muscle / soft tissue
    hu[(spine < 1) & (spine > 0.45)] = 700.0  # cortical bone
    hu[spine <= 0.45] = 250.0  # marrow
    hu[label == 1] = rng.uniform(70, 85)  # enhancing organ
    hu[label == 2] = rng.uniform(15, 30)  # hypodense lesion
    hu = ndimage.gaussian_filter(hu, (0.6, 0.6, 0.0))
    image = hu.reshape(ni, nj, nk, thick).mean(axis=3) + rng.normal(0.0, rng.uniform(12, 18), CT_ANISO_SHAPE)
    label = np.ascontiguousarray(label[:, :, thick // 2 :: thick])
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16), label


def _write(
    out_dir: Path,
    name: str,
    n: int,
    seed: int,
    labels: dict[int, str],
    scan: Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray, tuple[float, ...]]],
    description: str,
) -> Path:
    import pandas as pd

    splits = assign_splits(n, np.random.default_rng(seed), held_out_fraction=0.2)
    rows = []
    for idx in range(n):
        rng = np.random.default_rng([seed, idx])
        image, label, spacing = scan(rng, idx)
        affine = rotated_scan_affine(spacing, rng.uniform(-10, 10), tuple(rng.uniform(-60, 60, 3)))
        sid = f"{name}_{idx:03d}"
        image_path = save_nifti(image, affine, out_dir / "images" / f"{sid}.nii.gz")
        label_path = save_nifti(label, affine, out_dir / "labels" / f"{sid}.nii.gz")
        rows.append(
            {
                "subject_id": sid,
                "image": image_path.relative_to(out_dir).as_posix(),
                "label": label_path.relative_to(out_dir).as_posix(),
                "split": splits[idx],
            }
        )
    write_json(
        {
            "name": f"unet-med bench {name}",
            "description": description,
            "spatial_dims": 3,
            "labels": {str(k): v for k, v in labels.items()},
            "seed": seed,
        },
        out_dir / "manifest.json",
    )
    return write_csv(
        pd.DataFrame(rows, columns=["subject_id", "image", "label", "split"]), out_dir / "manifest.csv"
    )


def generate_mr(out_dir: str | Path, *, n: int = 16, seed: int = 0) -> Path:
    """Write the ``mr`` dataset (``n`` head volumes) into ``out_dir``; the manifest CSV path.

    The background margins are spread evenly over 2-20 mm per side (in a seeded order), so the
    dataset holds both tight and wide fields of view in every split.
    """
    margins = np.linspace(2.0, 20.0, n)[np.random.default_rng([seed, 10**6]).permutation(n)]

    def scan(rng: np.random.Generator, idx: int) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
        image, label = mr_head_volume(rng, float(margins[idx]))
        return image, label, MR_SPACING

    return _write(
        Path(out_dir),
        "mr",
        n,
        seed,
        MR_LABELS,
        scan,
        "MR-like T1 heads, 1 mm isotropic, 0-300 a.u., varying field of view",
    )


def generate_ct_aniso(out_dir: str | Path, *, n: int = 20, seed: int = 0) -> Path:
    """Write the ``ct_aniso`` dataset (``n`` slabs at 0.7 x 0.7 x 5 mm) into ``out_dir``; the
    manifest CSV path."""

    def scan(rng: np.random.Generator, idx: int) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
        image, label = ct_aniso_volume(rng)
        return image, label, CT_ANISO_SPACING

    return _write(
        Path(out_dir),
        "ct_aniso",
        n,
        seed,
        CT_ANISO_LABELS,
        scan,
        "CT-like abdomen slabs in HU, 0.7 x 0.7 x 5 mm voxels",
    )


DATASETS: dict[str, Callable[..., Path]] = {"mr": generate_mr, "ct_aniso": generate_ct_aniso}


def generate_dataset(name: str, out_dir: str | Path, *, n: int | None = None, seed: int = 0) -> Path:
    """Write dataset ``name`` (``"mr"`` or ``"ct_aniso"``) into ``out_dir``; the manifest CSV path.

    Raises:
        ValueError: an unknown name.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name](out_dir, seed=seed) if n is None else DATASETS[name](out_dir, n=n, seed=seed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.datasets", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(DATASETS))
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(generate_dataset(args.name, args.out, n=args.n, seed=args.seed))


if __name__ == "__main__":
    main()
