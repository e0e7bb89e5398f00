"""Synthetic demo datasets: small, learnable, CT-like scans with multi-class labels, generated offline.

2D (the paper's setting): ``size`` x ``size`` slices of touching blob-shaped objects of two
classes on a noisy, slowly varying background. Touching objects are separated in the label by a
one-pixel background gap (as in the paper's cell data), while the image shows them pressed
together with only a faint darker border, so the border weight map matters.

3D: CT-like volumes (air, a body of soft tissue, a bone ring, an "organ" with a "lesion")
with anisotropic spacing and a rotated, non-identity affine.

Intensities are int16 Hounsfield units with Gaussian noise; labels are uint8 class indices.
Everything is seeded: the same arguments write the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from unet_med.data.writing import save_nifti, write_csv, write_json

__all__ = [
    "DEMO_LABELS_2D",
    "DEMO_LABELS_3D",
    "demo_image_2d",
    "demo_volume_3d",
    "generate_demo_dataset",
    "rotated_scan_affine",
]

DEMO_LABELS_2D = {0: "background", 1: "cell", 2: "dense_cell"}
DEMO_LABELS_3D = {0: "background", 1: "organ", 2: "lesion"}


def rotated_scan_affine(
    spacing: tuple[float, ...], angle_deg: float, origin: tuple[float, float, float]
) -> np.ndarray:
    """4x4 RAS affine of a scan stored in the DICOM-usual LPS axis order, rotated by ``angle_deg``
    about the z axis; ``spacing`` in mm (2 or 3 values; a missing slice spacing is 1 mm), ``origin``
    in mm."""
    t = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    sp = np.ones(3)
    sp[: len(spacing)] = spacing
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(sp)  # right-handed, like a DICOM series
    affine[:3, 3] = origin
    return affine


def demo_image_2d(rng: np.random.Generator, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """One 2D image (int16 HU) and its label (uint8: 0 background, 1 cell, 2 dense cell).

    Objects are ellipses grown in clusters so that neighbours touch; where two objects meet the
    label keeps a one-pixel background gap (the paper's separation border).
    """
    ii, jj = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    n_clusters = int(rng.integers(2, 4))
    objects = []
    for _ in range(n_clusters):
        cx, cy = rng.uniform(0.2 * size, 0.8 * size, 2)
        for _ in range(int(rng.integers(2, 4))):
            r = rng.uniform(0.07, 0.11) * size
            ang = rng.uniform(0, 2 * np.pi)
            off = rng.uniform(0.6, 1.0) * r
            objects.append(
                (
                    cx + off * np.cos(ang),
                    cy + off * np.sin(ang),
                    r * rng.uniform(0.8, 1.2),
                    r * rng.uniform(0.8, 1.2),
                    rng.uniform(0, np.pi),
                    int(rng.integers(1, 3)),
                )
            )
    best = np.full((size, size), np.inf)
    inst = np.zeros((size, size), np.int32)
    for k, (ox, oy, a, b, th, _) in enumerate(objects, start=1):
        du, dv = ii - ox, jj - oy
        u = (du * np.cos(th) + dv * np.sin(th)) / a
        v = (-du * np.sin(th) + dv * np.cos(th)) / b
        dist = u**2 + v**2
        take = (dist < 1.0) & (dist < best)
        inst[take], best[take] = k, dist[take]
    # One-pixel gap where two different objects touch (on the side of the higher index).
    gap = np.zeros_like(inst, bool)
    for axis in (0, 1):
        for shift in (1, -1):
            nb = np.roll(inst, shift, axis=axis)
            gap |= (inst > 0) & (nb > 0) & (nb < inst)
    classes = np.array([0] + [o[5] for o in objects], np.uint8)
    label = classes[inst]
    label[gap] = 0
    # Image: slowly varying background, class intensities, faint borders, blur and noise.
    bg = -60.0 + 30.0 * ndimage.gaussian_filter(rng.normal(size=(size, size)), size / 8) * (size / 8)
    hu = np.where(label == 1, 220.0, np.where(label == 2, 420.0, bg))
    hu[gap] = np.where(classes[inst[gap]] == 2, 300.0, 140.0)
    hu = ndimage.gaussian_filter(hu, 0.7) + rng.normal(0.0, 35.0, hu.shape)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), label


def demo_volume_3d(
    rng: np.random.Generator, shape: tuple[int, int, int] = (56, 56, 40)
) -> tuple[np.ndarray, np.ndarray]:
    """One CT-like volume (int16 HU) and its label (uint8: 0 background, 1 organ, 2 lesion).

    Axes are (i, j, k) with k the (coarser) slice axis.
    """
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")

    def ellipsoid(center: np.ndarray, radii: np.ndarray) -> np.ndarray:
        return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii))

    body = ellipsoid(
        rng.uniform(-0.05, 0.05, 3), np.array([rng.uniform(0.75, 0.9), rng.uniform(0.6, 0.75), 1.6])
    )
    organ_c = np.array([rng.uniform(-0.25, 0.25), rng.uniform(-0.1, 0.2), rng.uniform(-0.25, 0.25)])
    organ_r = np.array([rng.uniform(0.35, 0.5), rng.uniform(0.3, 0.4), rng.uniform(0.45, 0.65)])
    organ = ellipsoid(organ_c, organ_r)
    lesion_c = organ_c + rng.uniform(-0.35, 0.35, 3) * organ_r
    lesion = ellipsoid(lesion_c, np.full(3, rng.uniform(0.16, 0.24)) * np.array([1, 1, 1.3]))
    spine = ellipsoid(np.array([0.0, -0.45, 0.0]), np.array([0.12, 0.12, 5.0]))
    label = np.zeros(shape, np.uint8)
    label[(organ < 1) & (body < 1)] = 1
    label[(lesion < 1) & (body < 1)] = 2
    hu = np.full(shape, -1000.0)
    hu[body < 1] = 30.0
    hu[(spine < 1) & (spine > 0.4)] = 700.0
    hu[spine <= 0.4] = 250.0
    hu[label == 1] = 110.0
    hu[label == 2] = 210.0
    hu = ndimage.gaussian_filter(hu, 0.6) + rng.normal(0.0, 20.0, shape)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16), label


def assign_splits(n: int, rng: np.random.Generator, held_out_fraction: float = 0.15) -> list[str]:
    """Splits for ``n`` synthetic scans in a seeded order: ``held_out_fraction`` of them each for
    validation and test (at least one each), the rest for training."""
    if n < 3:
        raise ValueError(f"a synthetic dataset needs n >= 3 scans (one per split), got n={n}")
    n_val = n_test = max(1, round(held_out_fraction * n))
    splits = ["train"] * (n - n_val - n_test) + ["val"] * n_val + ["test"] * n_test
    return [splits[i] for i in rng.permutation(n)]


def generate_demo_dataset(
    out_dir: str | Path,
    *,
    dims: int = 2,
    n: int | None = None,
    format: str = "nifti",
    seed: int = 0,
    size: int | None = None,
) -> Path:
    """Write a synthetic dataset and its manifest; return the manifest CSV path.

    Args:
        out_dir: target folder; gets ``images/``, ``labels/``, ``manifest.csv`` and
            ``manifest.json`` (label names, spatial dims; read by :func:`manifest_labels`).
        dims: 2 (touching blobs, ``size`` x ``size`` pixels, default 96) or 3 (CT-like volumes,
            ``size`` x ``size`` x ``0.7 size`` voxels, default 56).
        n: number of scans (default 40 in 2D, 12 in 3D), split about 70/15/15 into train/val/test.
        format: ``"nifti"`` (``.nii.gz`` files) or ``"dicom"`` (images as DICOM series folders,
            one file per slice; labels stay NIfTI).
        seed: random seed; equal arguments write equal data.

    Raises:
        ValueError: for an unknown ``dims``/``format`` or ``n < 3``.
    """
    from unet_med.dicom.synthetic import write_dicom_series

    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    if format not in ("nifti", "dicom"):
        raise ValueError(f"format must be 'nifti' or 'dicom', got {format!r}")
    n = n if n is not None else (40 if dims == 2 else 12)
    size = size if size is not None else (96 if dims == 2 else 56)
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    splits = assign_splits(n, rng)
    rows = []
    for idx in range(n):
        sid = f"demo{dims}d_{idx:03d}"
        if dims == 2:
            image, label = demo_image_2d(rng, size)
            affine = rotated_scan_affine((0.6, 0.6), rng.uniform(-15, 15), (*rng.uniform(-50, 50, 2), 0.0))
        else:
            image, label = demo_volume_3d(rng, (size, size, max(8, int(round(0.7 * size)))))
            angle = rng.uniform(-15, 15)  # drawn before the origin: the seed's data stay the same
            affine = rotated_scan_affine((0.8, 0.8, 2.5), angle, tuple(rng.uniform(-100, 100, 3)))
        label_path = save_nifti(label, affine, out_dir / "labels" / f"{sid}.nii.gz")
        if format == "nifti":
            image_path = save_nifti(image, affine, out_dir / "images" / f"{sid}.nii.gz")
        else:
            image_path = out_dir / "images" / sid
            uid_seed = f"unet-med-demo-{dims}-{seed}-{idx}"
            from pydicom.uid import generate_uid

            write_dicom_series(
                image,
                affine,
                image_path,
                series_uid=generate_uid(entropy_srcs=[uid_seed]),
                study_uid=generate_uid(entropy_srcs=[uid_seed, "study"]),
                subject=f"DEMO{idx:03d}",
                series_description=f"unet-med demo {dims}D",
            )
        rows.append(
            {
                "subject_id": sid,
                "image": image_path.relative_to(out_dir).as_posix(),
                "label": label_path.relative_to(out_dir).as_posix(),
                "split": splits[idx],
            }
        )
    import pandas as pd

    labels = DEMO_LABELS_2D if dims == 2 else DEMO_LABELS_3D
    write_json(
        {
            "name": f"unet-med demo {dims}D",
            "spatial_dims": dims,
            "modality": "CT",
            "labels": {str(k): v for k, v in labels.items()},
            "seed": seed,
        },
        out_dir / "manifest.json",
    )
    return write_csv(
        pd.DataFrame(rows, columns=["subject_id", "image", "label", "split"]), out_dir / "manifest.csv"
    )
