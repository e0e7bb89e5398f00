"""From network logits to a label map in the scan's own geometry.

:func:`postprocessing_transforms` is the chain a bundle's ``inference.json`` refers to by
``_target_`` (id ``postprocessing``): argmax over the class channel (:class:`ChannelArgmaxd`),
inversion of the spatial preprocessing (``monai.transforms.Invertd``, nearest neighbour, so labels
stay labels), then optionally MONAI's ``KeepLargestConnectedComponentd`` and ``FillHolesd`` per label.
:func:`to_input_geometry` is the safety net of batch inference: whatever the bundle's chain did,
the label map that gets written has the loaded scan's shape.
:func:`probabilities_to_input_geometry` brings the softmax back by the same inversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    FillHolesd,
    Invertd,
    InvertibleTransform,
    KeepLargestConnectedComponentd,
    MapTransform,
)
from monai.utils import convert_to_dst_type

__all__ = [
    "ChannelArgmaxd",
    "channel_argmax",
    "postprocessing_transforms",
    "probabilities_to_input_geometry",
    "to_input_geometry",
]


def channel_argmax(logits: Any) -> Any:
    """Label map ``(1, *spatial)`` of class logits ``(C, *spatial)``: the index of the largest
    class, the first one where several tie; float32 and of the input's type and metadata, as
    ``monai.transforms.AsDiscrete(argmax=True)`` gives it.

    Written here because ``torch.argmax`` over the leading (class) axis of a channel-first
    volume is about 10x slower on the CPU than ``torch.max(dim=0)``, which returns the same
    indices (1.5 s against 0.15 s for 3 x 344 x 331 x 120 logits).
    """
    values = logits.as_tensor() if isinstance(logits, MetaTensor) else torch.as_tensor(logits)
    labels = values.max(dim=0, keepdim=True).indices.to(torch.float32)
    return convert_to_dst_type(labels, logits, dtype=torch.float32)[0]


class ChannelArgmaxd(MapTransform):
    """Dictionary version of :func:`channel_argmax`: the label map replaces the logits under ``keys``."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Any) -> dict[Any, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = channel_argmax(d[key])
        return d


def postprocessing_transforms(
    keys: str | Sequence[str] = "pred",
    *,
    preprocessing: InvertibleTransform | None = None,
    orig_keys: str | Sequence[str] = "image",
    argmax: bool = True,
    largest_component: bool = False,
    fill_holes: bool = False,
    applied_labels: Sequence[int] | None = None,
) -> Compose:
    """Logits ``(C, *spatial)`` -> label map ``(1, *spatial)`` in the input's geometry.

    Args:
        keys: dictionary key(s) of the prediction.
        preprocessing: the invertible preprocessing chain applied to ``orig_keys``
            (``@preprocessing`` in a bundle); ``None`` skips the inversion.
        orig_keys: key whose ``applied_operations`` are inverted.
        argmax: turn class logits into labels first (off when the network already gives labels).
        largest_component: keep only the largest connected component of each label.
        fill_holes: fill holes enclosed by a label (per label).
        applied_labels: labels the two clean-ups act on; default every non-zero label.
    """
    steps: list[Any] = []
    if argmax:
        steps.append(ChannelArgmaxd(keys))
    if preprocessing is not None:
        steps.append(Invertd(keys, transform=preprocessing, orig_keys=orig_keys, nearest_interp=True))
    if largest_component:
        steps.append(KeepLargestConnectedComponentd(keys, applied_labels=applied_labels, independent=True))
    if fill_holes:
        steps.append(FillHolesd(keys=keys, applied_labels=applied_labels))
    return Compose(steps)


def _inverted(
    data: dict[str, Any], value: torch.Tensor, *, preprocessing: InvertibleTransform, key: str, orig_key: str
) -> torch.Tensor:
    """``value`` (stored under ``key``) brought back through ``preprocessing`` with MONAI's
    ``Invertd``, nearest-neighbour interpolation (labels keep their values, probabilities do not
    mix neighbours), using the operations recorded on ``data[orig_key]``."""
    invert = Invertd(
        keys=key, transform=preprocessing, orig_keys=orig_key, nearest_interp=True, to_tensor=True
    )
    return invert({**data, key: value})[key]


def to_input_geometry(
    data: dict[str, Any],
    *,
    preprocessing: InvertibleTransform | None,
    spatial_shape: Sequence[int],
    key: str = "pred",
    orig_key: str = "image",
    name: str = "scan",
) -> np.ndarray:
    """The label map of ``data[key]`` as a ``uint8`` array of ``spatial_shape``.

    Takes an argmax when the prediction still has several channels and inverts ``preprocessing``
    when the prediction still carries its operations (a bundle chain without ``Invertd``).

    Raises:
        ValueError: naming ``name`` when the result cannot be brought to ``spatial_shape`` or
            holds more than 255 labels.
    """
    pred = data[key]
    if not isinstance(pred, torch.Tensor):
        pred = torch.as_tensor(np.asarray(pred))
    if pred.ndim == len(spatial_shape) + 1 and pred.shape[0] > 1:
        pred = channel_argmax(pred)
    pending = getattr(pred, "applied_operations", None)
    if pending and preprocessing is not None and tuple(pred.shape[1:]) != tuple(spatial_shape):
        pred = _inverted(data, pred, preprocessing=preprocessing, key=key, orig_key=orig_key)
    array = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    if array.ndim == len(spatial_shape) + 1:
        array = array[0]
    if tuple(array.shape) != tuple(spatial_shape):
        raise ValueError(
            f"{name}: the post-processed label map has shape {tuple(array.shape)}, expected the scan's "
            f"{tuple(spatial_shape)} (the bundle's postprocessing must invert its spatial preprocessing)"
        )
    array = np.rint(array)
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(
            f"{name}: label values {int(array.min())}..{int(array.max())} do not fit uint8 (0..255)"
        )
    return array.astype(np.uint8)


def probabilities_to_input_geometry(
    data: dict[str, Any],
    *,
    preprocessing: InvertibleTransform | None,
    spatial_shape: Sequence[int],
    key: str = "pred",
    orig_key: str = "image",
    name: str = "scan",
) -> np.ndarray:
    """The softmax of the logits ``data[key]`` (``(C, *spatial)``, preprocessed grid) as float32
    ``(C, *spatial_shape)`` in the scan's own grid, summing to 1 over C at every voxel.

    The inversion is the label map's: ``Invertd`` of ``preprocessing`` with nearest-neighbour
    interpolation, so the argmax of the result is the label map before the bundle's optional
    clean-ups (largest component, hole filling) and no voxel mixes the classes of two
    neighbours. Voxels that the preprocessing cropped away come back as zeros from the inverse
    padding; they are background (probability 1 for class 0), as they are in the label map.

    Raises:
        ValueError: naming ``name`` when the result does not come back to ``spatial_shape``.
    """
    logits = data[key]
    if not isinstance(logits, torch.Tensor):
        logits = torch.as_tensor(np.asarray(logits))
    probabilities = torch.softmax(logits.float(), dim=0)
    if preprocessing is not None and getattr(data.get(orig_key), "applied_operations", None):
        probabilities = _inverted(
            data, probabilities, preprocessing=preprocessing, key=key, orig_key=orig_key
        )
    if isinstance(probabilities, torch.Tensor):
        probabilities = probabilities.detach().cpu().numpy()
    array = np.asarray(probabilities, dtype=np.float32)
    if tuple(array.shape[1:]) != tuple(spatial_shape):
        raise ValueError(
            f"{name}: the probabilities have shape {tuple(array.shape[1:])} after inversion, expected the "
            f"scan's {tuple(spatial_shape)} (the bundle's preprocessing must be invertible)"
        )
    total = array.sum(axis=0)
    outside = total < 0.5  # padding of the inverse crop: every class 0
    array[0][outside] = 1.0
    total[outside] = 1.0
    return array / total[None]
