"""Per-label measurements of a segmented scan for ``report.csv`` (``unet-med infer --statistics``):
the mean and standard deviation of the scan's original intensities inside each label (Hounsfield
units for CT, the stored values otherwise) and the number of connected components of each label.

Components are counted with full connectivity (8 neighbours in 2D, 26 in 3D), as MONAI's
``KeepLargestConnectedComponent`` counts them by default, with ``scipy.ndimage.label``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from unet_med.inference.report import label_column_name

__all__ = ["label_statistics", "statistics_columns"]


def statistics_columns(labels: Mapping[int, str]) -> list[str]:
    """``intensity_mean_<label>``, ``intensity_std_<label>``, ``components_<label>`` for every
    foreground label ({value: name}, 0 = background excluded)."""
    names = [label_column_name(n) for v, n in sorted(labels.items()) if v != 0]
    return (
        [f"intensity_mean_{n}" for n in names]
        + [f"intensity_std_{n}" for n in names]
        + [f"components_{n}" for n in names]
    )


def label_statistics(
    label_map: np.ndarray, image: np.ndarray, labels: Mapping[int, str]
) -> dict[str, float | int]:
    """Mean and (population) standard deviation of ``image`` inside each foreground label, and the
    label's number of connected components.

    Args:
        label_map: integer labels in the scan's grid (spatial axes only).
        image: the scan's original intensities on the same grid (its first channel; HU for CT).
        labels: {label value: name}; value 0 (background) is not reported.

    Returns:
        The :func:`statistics_columns` with their values; mean and std are NaN for a label with no
        voxel (its component count is 0).

    Raises:
        ValueError: when the two arrays have different shapes.
    """
    from scipy import ndimage

    label_map, image = np.asarray(label_map), np.asarray(image, dtype=np.float64)
    if label_map.shape != image.shape:
        raise ValueError(f"label map of shape {label_map.shape} and image of shape {image.shape} differ")
    connectivity = ndimage.generate_binary_structure(label_map.ndim, label_map.ndim)
    result: dict[str, float | int] = {}
    for value, name in sorted(labels.items()):
        if value == 0:
            continue
        col = label_column_name(name)
        mask = label_map == value
        inside = image[mask]
        result[f"intensity_mean_{col}"] = float(inside.mean()) if inside.size else float("nan")
        result[f"intensity_std_{col}"] = float(inside.std()) if inside.size else float("nan")
        components = ndimage.label(mask, structure=connectivity)[1] if inside.size else 0
        result[f"components_{col}"] = int(components)
    return result
