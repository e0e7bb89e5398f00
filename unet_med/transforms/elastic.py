"""The paper's elastic deformation: random displacement vectors on a coarse grid of control
points, interpolated to a smooth dense field that warps all keys of a sample together.

Displacements are in voxels; data are channel-first, 2D ``(C, H, W)`` or 3D ``(C, H, W, D)``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable
from monai.utils import convert_to_dst_type, ensure_tuple
from scipy import ndimage

__all__ = ["RandCoarseElasticd"]


class RandCoarseElasticd(Randomizable, MapTransform):
    """The paper's elastic deformation: random displacements on a coarse grid, smoothly interpolated.

    Displacement vectors on a ``grid`` x ``grid`` (x ``grid``) lattice spanning the patch are drawn
    from a Gaussian with ``sigma`` voxels standard deviation and interpolated to every voxel with
    cubic splines (the paper: bicubic). All keys are resampled with the same field, mirroring at
    the borders, each with its own interpolation ``order``: 0 nearest (labels), 1 linear (weight
    maps), 3 cubic for images in 2D (``grid_sample`` has no tricubic mode, so 3D images are
    resampled trilinearly; the *field* is cubic in 2D and 3D alike).

    Why our own: MONAI's ``Rand2DElasticd``/``Rand3DElasticd`` smooth a dense random field with
    a Gaussian and ``RandGridDistortiond`` shifts grid lines per axis; neither is the paper's
    coarse-grid Gaussian displacement with cubic interpolation, in 2D and 3D alike.

    Speed: the dense field is the coarse grid times one small cubic-spline interpolation matrix
    per axis (the spline zoom is separable), and the warp is one ``torch.grid_sample`` in
    float32, multi-threaded; no dense spline evaluation in float64.

    Args:
        keys: keys to deform (channel-first, same spatial shape).
        prob: probability of deforming a sample.
        sigma: standard deviation of the grid displacements in voxels (paper: 10).
        grid: control points per axis (paper: 3).
        order: interpolation order per key (int or one per key); default 3 for the first key,
            0 for the others.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prob: float = 0.5,
        sigma: float = 10.0,
        grid: int = 3,
        order: int | Sequence[int] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.prob, self.sigma, self.grid = prob, sigma, grid
        if order is None:
            order = [3] + [0] * (len(self.keys) - 1)
        self.order = list(ensure_tuple(order)) * (len(self.keys) if isinstance(order, int) else 1)
        if len(self.order) != len(self.keys):
            raise ValueError(f"order needs one spline order per key ({len(self.keys)}), got {order}")
        if any(o not in (0, 1, 3) for o in self.order):
            raise ValueError(f"interpolation orders must be 0, 1 or 3, got {self.order}")
        self._do = False
        self._coarse: np.ndarray | None = None

    def randomize(self, spatial_dims: int) -> None:  # type: ignore[override]
        self._do = self.R.random_sample() < self.prob
        self._coarse = self.R.normal(0.0, self.sigma, size=(spatial_dims,) + (self.grid,) * spatial_dims)

    def _axis_matrix(self, size: int) -> np.ndarray:
        """``(size, grid)`` cubic-spline zoom of each coarse control point along one axis."""
        eye = np.eye(self.grid)
        return np.stack(
            [ndimage.zoom(e, size / self.grid, order=3, mode="nearest", grid_mode=False) for e in eye], axis=1
        )

    def displacement(self, shape: Sequence[int]) -> np.ndarray:
        """Dense displacement field ``(ndim, *shape)`` in voxels from the last drawn coarse grid."""
        assert self._coarse is not None
        field = self._coarse
        for axis, size in enumerate(shape):
            # contract the control-point axis ``axis + 1`` with its interpolation matrix
            field = np.tensordot(self._axis_matrix(size), field, axes=([1], [axis + 1]))
            field = np.moveaxis(field, 0, axis + 1)
        return field

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        first = next(d[k] for k in self.key_iterator(d))
        shape = tuple(first.shape[1:])
        ndim = len(shape)
        self.randomize(ndim)
        if not self._do:
            return d
        # grid_sample wants normalised coordinates, last axis ordered (x, y[, z]) = reversed axes;
        # with align_corners=True voxel i of an axis of n voxels sits at 2 i / (n - 1) - 1.
        coords = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
        coords = coords + self.displacement(shape).astype(np.float32)
        scale = np.array([2.0 / max(s - 1, 1) for s in shape], np.float32).reshape((ndim,) + (1,) * ndim)
        grid = torch.from_numpy(np.moveaxis(coords * scale - 1.0, 0, -1)[..., ::-1].copy())[None]
        for key, order in zip(self.keys, self.order):
            if key not in d:
                continue
            img = d[key]
            arr = torch.as_tensor(img.detach().cpu() if isinstance(img, torch.Tensor) else img)
            mode = {0: "nearest", 1: "bilinear", 3: "bicubic" if ndim == 2 else "bilinear"}[order]
            warped = torch.nn.functional.grid_sample(
                arr.float()[None], grid, mode=mode, padding_mode="reflection", align_corners=True
            )[0].to(arr.dtype)
            d[key] = convert_to_dst_type(warped, dst=img)[0]
        return d
