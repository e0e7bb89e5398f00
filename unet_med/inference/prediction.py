"""One scan -> its label map: load, preprocess, infer, post-process, back to the scan's own grid.

Split in two steps so that batch inference can run :func:`prepare_scan` (disk and CPU bound) for
the next scan in a background thread while :func:`predict_label_map` (network bound) runs for the
current one. Both record the seconds of their stages in :attr:`PreparedScan.seconds` (``load``,
``preprocess``, ``predict``: the inferer, ``postprocess``: post-processing and inversion back to the
scan's grid); :func:`predict_label_map` can also bring the softmax back to the scan's grid
(:attr:`PreparedScan.probabilities`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from monai.data.utils import to_affine_nd

from unet_med.data.discovery import Scan
from unet_med.inference.bundle_loading import InferenceBundle

__all__ = ["PreparedScan", "predict_label_map", "prepare_scan"]


@dataclass
class PreparedScan:
    """A loaded, preprocessed scan.

    Attributes:
        data: the transform dictionary (``"image"`` preprocessed, with its applied operations).
        image: the first channel in the scan's own grid (for the QC picture).
        affine: 4x4 RAS voxel-to-world affine of the scan (mm).
        spatial_shape: the scan's size in voxels.
        seconds: wall seconds per stage so far: ``load``, ``preprocess`` (:func:`prepare_scan`),
            ``predict``, ``postprocess`` (:func:`predict_label_map`).
        probabilities: after :func:`predict_label_map` with ``probabilities=True``: the softmax,
            float32 ``(C, *spatial_shape)`` in the scan's grid, summing to 1 over C.
    """

    data: dict[str, Any]
    image: np.ndarray
    affine: np.ndarray
    spatial_shape: tuple[int, ...]
    seconds: dict[str, float] = field(default_factory=dict)
    probabilities: np.ndarray | None = None


def prepare_scan(scan: Scan, bundle: InferenceBundle) -> PreparedScan:
    """Load ``scan`` and run the bundle's preprocessing.

    Raises:
        ValueError: naming the scan when it is empty or does not fit the network (dimensions,
            channels); :class:`~unet_med.data.loading.ScanLoadError` when it cannot be loaded.
    """
    from unet_med.data.loading import load_scan

    start = time.perf_counter()
    image = load_scan(scan)
    loaded = time.perf_counter()
    spatial = tuple(int(s) for s in image.shape[1:])
    if image.numel() == 0 or any(s == 0 for s in spatial):
        raise ValueError(f"scan {scan.scan_id}: empty image (shape {spatial})")
    if len(spatial) != bundle.spatial_dims:
        raise ValueError(
            f"scan {scan.scan_id}: {len(spatial)}D image of shape {spatial}, but the bundle's network "
            f"segments {bundle.spatial_dims}D images"
        )
    if image.shape[0] != bundle.in_channels:
        raise ValueError(
            f"scan {scan.scan_id}: {image.shape[0]} channel(s), but the bundle's network takes "
            f"{bundle.in_channels}"
        )
    affine = to_affine_nd(3, image.affine.numpy())
    raw = image[0].numpy().copy()
    data = bundle.preprocessing({"image": image})
    seconds = {"load": loaded - start, "preprocess": time.perf_counter() - loaded}
    return PreparedScan(data=data, image=raw, affine=affine, spatial_shape=spatial, seconds=seconds)


def predict_label_map(
    prepared: PreparedScan, bundle: InferenceBundle, name: str, *, probabilities: bool = False
) -> np.ndarray:
    """Label map (uint8, the scan's grid) of a prepared scan: inferer, postprocessing, checks.

    With ``probabilities``, also the softmax of the network's output, brought back to the scan's
    grid by the same inversion as the label map (:func:`~unet_med.inference.postprocessing.
    probabilities_to_input_geometry`), into ``prepared.probabilities``. Stage seconds go into
    ``prepared.seconds`` (``predict``, ``postprocess``).

    Raises:
        ValueError: naming ``name`` when the label map does not come back to the scan's shape.
    """
    import torch

    from unet_med.inference.postprocessing import probabilities_to_input_geometry, to_input_geometry

    data = prepared.data
    x = data["image"]
    start = time.perf_counter()
    with torch.no_grad():
        logits = bundle.inferer(x[None].to(bundle.device), bundle.network)[0].to("cpu")
    predicted = time.perf_counter()
    data["pred"] = logits
    with torch.no_grad():
        data = bundle.postprocessing(data) if bundle.postprocessing is not None else data
    label_map = to_input_geometry(
        data, preprocessing=bundle.preprocessing, spatial_shape=prepared.spatial_shape, name=name
    )
    if probabilities:
        prepared.probabilities = probabilities_to_input_geometry(
            {**prepared.data, "pred": logits},
            preprocessing=bundle.preprocessing,
            spatial_shape=prepared.spatial_shape,
            name=name,
        )
    prepared.seconds.update(predict=predicted - start, postprocess=time.perf_counter() - predicted)
    return label_map
