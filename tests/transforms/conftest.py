"""Shared fixtures of the transform tests: an MR-like 3D body and a field of view of noisy air
around it (the body-foreground normalisation and the body foreground crop)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest


def _mr_body(rng: np.random.Generator, size: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """An MR-like 3D body: two tissues (120 and 220) inside a sphere, no background."""
    grid = np.meshgrid(*[np.linspace(-1, 1, size)] * 3, indexing="ij")
    r2 = sum(g**2 for g in grid)
    body = np.where(r2 < 0.3, 220.0, 120.0) + rng.normal(0, 5, (size,) * 3)
    return body, r2 < 1.0


def _in_field_of_view(body: np.ndarray, inside: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """The body inside a field of view ``pad`` voxels wider, filled with noisy (non-zero) air."""
    shape = tuple(s + 2 * pad for s in body.shape)
    image = np.abs(rng.normal(0, 6, shape))
    core = tuple(slice(pad, pad + s) for s in body.shape)
    image[core] = np.where(inside, body, image[core])
    return image.astype(np.float32)


@pytest.fixture
def mr_body() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``mr_body(rng, size=20)`` -> (body intensities, inside-the-sphere mask), see :func:`_mr_body`."""
    return _mr_body


@pytest.fixture
def in_field_of_view() -> Callable[..., np.ndarray]:
    """``in_field_of_view(body, inside, pad, rng)``: the body in noisy air, see :func:`_in_field_of_view`."""
    return _in_field_of_view
