"""Training losses: the paper's weighted pixel-wise softmax cross-entropy and Dice + CE, and the
batch preparation that hands the border weight map to the loss.

A valid-convolution U-Net predicts a smaller tile than it reads, so both losses accept label and
weight patches that are larger than the prediction and compare the prediction with their centre
(the overlap-tile relation: the output tile sits in the middle of the input tile).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines import PrepareBatch, default_prepare_batch
from monai.losses import DiceCELoss
from torch import nn

from unet_med.networks.blocks import center_crop

__all__ = ["WeightedCrossEntropyLoss", "ValidDiceCELoss", "PrepareBatchWithWeight", "center_crop_to"]


def center_crop_to(tensor: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
    """Crop the trailing spatial axes of ``tensor`` (batch, channel, *spatial) to their centre
    (:func:`unet_med.networks.blocks.center_crop`), after checking that the prediction of size
    ``spatial_size`` sits centred on it.

    Raises ``ValueError`` when an axis is smaller than wanted or the difference is odd (the
    prediction would not be centred on the label).
    """
    size = tuple(int(s) for s in tensor.shape[2:])
    want = [int(s) for s in spatial_size]
    if size == tuple(want):
        return tensor
    if len(size) != len(want):
        raise ValueError(f"expected {len(want)} spatial axes, got shape {tuple(tensor.shape)}")
    for axis, (have, need) in enumerate(zip(size, want, strict=True)):
        if have < need or (have - need) % 2:
            raise ValueError(
                f"cannot centre a prediction of spatial size {tuple(want)} on a label/weight of size {size} "
                f"(axis {axis}: {have} vs {need}; the label must be at least as large and differ by "
                "an even number of voxels)"
            )
    return center_crop(tensor, want)


def _class_indices(label: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(B, 1, *spatial) or (B, *spatial) class indices, or (B, C, *spatial) one-hot -> (B, *spatial) long."""
    if label.ndim >= 3 and label.shape[1] == n_classes and n_classes > 1 and label.dtype.is_floating_point:
        if torch.all((label == 0) | (label == 1)) and torch.all(label.sum(1) == 1):
            return label.argmax(1)
    if label.shape[1] == 1:
        label = label[:, 0]
    return label.long()


class WeightedCrossEntropyLoss(nn.Module):
    """Pixel-wise softmax cross-entropy weighted by a per-pixel weight map (Ronneberger et al. 2015):

    ``E = sum_x w(x) * -log p_{l(x)}(x) / sum_x w(x)``

    where ``p`` is the softmax over the classes of the logits and ``w`` the border weight map
    (``w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))``, made by the data transforms). Normalising by
    the total weight keeps the loss scale independent of the tile size and of ``w0``; voxels with
    weight 0 (unlabelled, as in the 3D U-Net paper) do not count. Written here because
    ``torch.nn.CrossEntropyLoss`` weights classes, not voxels.

    Args:
        normalize: ``"weight"`` divides by the summed weight (default), ``"voxels"`` by the
            number of voxels (the paper's plain sum scaled by a constant).

    Call as ``loss(logits, target)`` with ``target`` either a label tensor (unweighted, every
    voxel weight 1) or a ``(label, weight)`` pair; or ``loss(logits, label, weight)``. Logits are
    (B, C, *spatial); label (B, 1, *spatial) class indices (or one-hot); weight (B, 1, *spatial).
    Label and weight may be larger than the logits (valid convolutions): their centre is used.
    """

    def __init__(self, normalize: str = "weight") -> None:
        super().__init__()
        if normalize not in ("weight", "voxels"):
            raise ValueError(f"normalize must be 'weight' or 'voxels', got {normalize!r}")
        self.normalize = normalize

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor | Sequence[torch.Tensor],
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if isinstance(target, (tuple, list)):
            if weight is not None:
                raise ValueError("give the weight map either inside the target pair or as `weight`, not both")
            label, weight = target
        else:
            label = target
        spatial = logits.shape[2:]
        label = center_crop_to(torch.as_tensor(label), spatial)
        indices = _class_indices(label, logits.shape[1])
        per_voxel = F.cross_entropy(logits.float(), indices, reduction="none")  # (B, *spatial)
        if weight is None:
            return per_voxel.mean()
        weight = center_crop_to(torch.as_tensor(weight), spatial)
        if weight.shape[1] != 1:
            raise ValueError(f"the weight map needs one channel, got shape {tuple(weight.shape)}")
        weight = weight[:, 0].to(per_voxel.dtype)
        total = (per_voxel * weight).sum()
        if self.normalize == "voxels":
            return total / per_voxel.numel()
        return total / weight.sum().clamp_min(torch.finfo(per_voxel.dtype).eps)


class ValidDiceCELoss(DiceCELoss):
    """MONAI :class:`~monai.losses.DiceCELoss` (soft Dice + cross-entropy) that centre-crops a
    label larger than the prediction, so valid-convolution networks train on the label patch
    around their output. Defaults: labels as class indices one-hot encoded, softmax on logits."""

    def __init__(self, to_onehot_y: bool = True, softmax: bool = True, **kwargs) -> None:
        super().__init__(to_onehot_y=to_onehot_y, softmax=softmax, **kwargs)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: A002
        if isinstance(target, (tuple, list)):  # a (label, weight) pair: Dice + CE ignores the weight
            target = target[0]
        return super().forward(input, center_crop_to(torch.as_tensor(target), input.shape[2:]))


class PrepareBatchWithWeight(PrepareBatch):
    """Batch -> ``(image, (label, weight))`` so the trainer hands the border weight map to
    :class:`WeightedCrossEntropyLoss` (MONAI's trainer passes the target alone to the loss).
    Without a ``weight`` key in the batch the target is the plain label."""

    def __init__(self, weight_key: str = "weight") -> None:
        self.weight_key = weight_key

    def __call__(
        self,
        batchdata: Mapping[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, Any]:
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)
        weight = batchdata.get(self.weight_key)
        if weight is None:
            return image, label
        weight = torch.as_tensor(weight).to(device=device, non_blocking=non_blocking)
        return image, (label, weight)
