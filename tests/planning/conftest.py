"""Tiny synthetic datasets for the planning tests: CT-like (HU, air around a body, bone) and
MR-like (values 0-300, noisy air), written as NIfTI (or DICOM) with a manifest."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from unet_med.data.writing import save_nifti


def _phantom(rng: np.random.Generator, shape: Sequence[int], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """A body ellipsoid holding a labelled organ (class 1) and a small lesion (class 2)."""
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    body = sum((g / r) ** 2 for g, r in zip(grid, (0.8, 0.7, 1.5))) < 1
    organ = sum(((g - c) / 0.35) ** 2 for g, c in zip(grid, (0.1, 0.0, 0.0))) < 1
    lesion = sum(((g - c) / 0.15) ** 2 for g, c in zip(grid, (0.2, 0.1, 0.0))) < 1
    bone = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, (0.0, -0.5, 0.0), (0.12, 0.12, 5.0))) < 1
    label = np.zeros(shape, np.uint8)
    label[organ & body] = 1
    label[lesion & body] = 2
    if kind == "ct":
        image = np.full(shape, -1000.0)
        image[body] = 40.0
        image[bone & body] = 700.0
        image[label == 1] = 120.0
        image[label == 2] = 200.0
        image = np.rint(image + rng.normal(0, 15, shape)).astype(np.int16)
    elif kind == "mr":
        image = np.abs(rng.normal(0, 6, shape))  # Rician-like air noise: non-zero, non-negative
        image[body] = 120.0 + rng.normal(0, 8, int(body.sum()))
        image[label == 1] = 220.0 + rng.normal(0, 8, int((label == 1).sum()))
        image[label == 2] = 280.0 + rng.normal(0, 8, int((label == 2).sum()))
        image = np.clip(image, 0, None).astype(np.float32)
    elif kind == "normalised":  # already z-scored: negative, no HU meaning
        image = rng.normal(0, 1, shape).astype(np.float32)
        image[label > 0] += 2.0
    else:
        raise ValueError(kind)
    return image, label


@pytest.fixture
def phantom() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``phantom(kind, shape=(24, 24, 12), seed=0) -> (image, label)``."""

    def make(kind: str, shape: Sequence[int] = (24, 24, 12), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        return _phantom(np.random.default_rng(seed), tuple(shape), kind)

    return make


@pytest.fixture
def write_dataset(tmp_path: Path) -> Callable[..., Path]:
    """``write_dataset(name, cases, spacing=..., labels=..., modality=None) -> manifest path``.

    ``cases``: (image, label) pairs, or (image_files, label) where image_files is a list of
    arrays for a multi-channel scan. ``spacing``: one spacing for all or one per case. The last
    case goes to the val split, the rest to train. ``labels``: sidecar label names (None: no
    sidecar); ``modality``: sidecar ``"modality"``.
    """

    def write(
        name: str,
        cases: Sequence[tuple],
        *,
        spacing: Sequence[float] | Sequence[Sequence[float]] = (1.0, 1.0, 1.0),
        labels: dict[int, str] | None = None,
        modality: str | None = None,
        val: int = 1,
    ) -> Path:
        root = tmp_path / name
        spacings = spacing if np.ndim(spacing) == 2 else [spacing] * len(cases)
        rows = ["subject_id,image,label,split"]
        for i, ((image, label), sp) in enumerate(zip(cases, spacings)):
            affine = np.diag([*sp] + [1.0] * (4 - len(sp)))
            channels = image if isinstance(image, list) else [image]
            names = []
            for c, channel in enumerate(channels):
                path = f"images/case{i:02d}_{c:04d}.nii.gz"
                save_nifti(channel, affine, root / path)
                names.append(path)
            save_nifti(label, affine, root / f"labels/case{i:02d}.nii.gz")
            split = "val" if i >= len(cases) - val else "train"
            rows.append(f"case{i:02d},{';'.join(names)},labels/case{i:02d}.nii.gz,{split}")
        (root / "manifest.csv").write_text("\n".join(rows) + "\n")
        sidecar = {}
        if labels is not None:
            sidecar["labels"] = {str(k): v for k, v in labels.items()}
        if modality is not None:
            sidecar["modality"] = modality
        if sidecar:
            (root / "manifest.json").write_text(json.dumps(sidecar))
        return root / "manifest.csv"

    return write
