"""Fixtures of the data tests: image/label NIfTI pairs with planted problems."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from unet_med.data.writing import save_nifti

PAIR_AFFINE = np.diag([0.8, 0.8, 2.0, 1.0])


@pytest.fixture
def image_label_pair() -> Callable[..., tuple[str, str]]:
    """``image_label_pair(root, name, *, shape, label_shape, label_affine, values, nan)``: writes
    ``root/img/<name>.nii.gz`` (float32 noise, NaN at the origin with ``nan``) and
    ``root/lab/<name>.nii.gz`` (uint8 zeros, the first voxels set to ``values``) with a 0.8 x 0.8 x
    2 mm affine; returns their paths relative to ``root``."""

    def pair(root, name, *, shape=(12, 10, 6), label_shape=None, label_affine=None, values=(0, 1), nan=False):
        img = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        if nan:
            img[0, 0, 0] = np.nan
        lab = np.zeros(label_shape or shape, np.uint8)
        lab.flat[: len(values)] = values
        save_nifti(img, PAIR_AFFINE, root / "img" / f"{name}.nii.gz")
        save_nifti(
            lab, PAIR_AFFINE if label_affine is None else label_affine, root / "lab" / f"{name}.nii.gz"
        )
        return f"img/{name}.nii.gz", f"lab/{name}.nii.gz"

    return pair
