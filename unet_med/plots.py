"""Every picture the project draws, as a PNG written atomically: the learning curve and the
validation overlays of a training, the QC picture of a segmented scan, and the metric curves of a
run comparison. Functions take plain arrays and numbers (channels-first tensors or numpy arrays,
(step, value) pairs), never engines or MLflow clients, so each is testable on its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unet_med.atomic_files import save_png
from unet_med.networks.blocks import center_crop

__all__ = ["plot_learning_curve", "plot_overlay", "save_qc_picture", "plot_metric_curves"]


def plot_learning_curve(
    train_loss: Sequence[tuple[int, float]],
    val_dice: Sequence[tuple[int, float]],
    path: str | os.PathLike,
    iterations_per_epoch: int | None = None,
) -> Path:
    """PNG with the training loss (per iteration, and its per-epoch mean) and the validation mean
    Dice per epoch. ``train_loss`` holds (iteration, loss) pairs, ``val_dice`` (epoch, Dice)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax_loss = plt.subplots(figsize=(7, 4), dpi=100)
    if train_loss:
        steps, losses = zip(*sorted(train_loss), strict=True)
        x = np.asarray(steps, float)
        epochs = x / iterations_per_epoch if iterations_per_epoch else x
        ax_loss.plot(epochs, losses, color="tab:blue", alpha=0.35, lw=0.8, label="train loss (iteration)")
        if iterations_per_epoch:
            per_epoch: dict[int, list[float]] = {}
            for step, loss in zip(steps, losses, strict=True):
                per_epoch.setdefault((step - 1) // iterations_per_epoch + 1, []).append(loss)
            ax_loss.plot(list(per_epoch), [np.mean(v) for v in per_epoch.values()], color="tab:blue",
                         marker="o", ms=3, label="train loss (epoch mean)")
    ax_loss.set_xlabel("epoch" if iterations_per_epoch else "iteration")
    ax_loss.set_ylabel("training loss", color="tab:blue")
    ax_dice = ax_loss.twinx()
    if val_dice:
        ep, dice = zip(*sorted(val_dice), strict=True)
        ax_dice.plot(ep, dice, color="tab:red", marker="s", ms=3, label="validation mean Dice")
    ax_dice.set_ylim(0, 1)
    ax_dice.set_ylabel("validation mean Dice", color="tab:red")
    fig.legend(loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save_png(fig, path)


def _to_index_map(array: Any) -> np.ndarray:
    """(C, *spatial) one-hot/probabilities or (1, *spatial) indices -> (*spatial) class indices."""
    a = torch.as_tensor(array).detach().cpu()
    if a.shape[0] > 1:
        return a.argmax(0).numpy()
    return a[0].round().long().numpy()


def plot_overlay(
    image: Any, label: Any, pred: Any, path: str | os.PathLike, title: str = ""
) -> Path:
    """PNG of one case: the image in gray, label contours in green, predicted contours in red.

    ``image`` (C, *spatial), ``label``/``pred`` (C, *spatial) one-hot or (1, *spatial) indices.
    3D cases show the axial slice (last axis) with the most labelled voxels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lab = _to_index_map(label)
    prd = _to_index_map(pred)
    img = torch.as_tensor(image).detach().cpu()[0].float().numpy()
    shape = [min(a, b, c) for a, b, c in zip(img.shape, lab.shape, prd.shape, strict=True)]
    img, lab, prd = (
        center_crop(torch.as_tensor(a)[None, None], shape)[0, 0].numpy() for a in (img, lab, prd)
    )
    if img.ndim == 3:
        z = int(np.argmax((lab > 0).reshape(-1, lab.shape[-1]).sum(0)))
        img, lab, prd = img[..., z], lab[..., z], prd[..., z]
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.imshow(img.T, cmap="gray", origin="lower")
    for cls in sorted(set(np.unique(lab)) | set(np.unique(prd)) - {0}):
        if (lab == cls).any():
            ax.contour((lab == cls).T.astype(float), levels=[0.5], colors="lime", linewidths=1.0)
        if (prd == cls).any():
            ax.contour((prd == cls).T.astype(float), levels=[0.5], colors="red", linewidths=1.0,
                       linestyles="dashed")
    ax.set_title(title or "label (green) / prediction (red)", fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    return save_png(fig, path)


def save_qc_picture(image: np.ndarray, label_map: np.ndarray, path: str | Path, *, title: str = "") -> Path:
    """A PNG with a few slices of ``image`` (last axis, through the segmented region) and every
    label's outline drawn on them; written atomically.

    Args:
        image: spatial array (2D or 3D, the scan's own voxel grid; first channel).
        label_map: integer labels on the same grid.
        path: target ``.png``.
        title: text above the picture (a scan id, never patient data).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    image = np.asarray(image, dtype=np.float32)
    label_map = np.asarray(label_map)
    if image.shape != label_map.shape:
        raise ValueError(f"QC picture: image shape {image.shape} differs from label shape {label_map.shape}")
    if image.ndim == 2:
        image, label_map = image[..., None], label_map[..., None]
    depth = image.shape[-1]
    fg = np.flatnonzero(label_map.reshape(-1, depth).any(axis=0))
    lo, hi = (fg[0], fg[-1]) if fg.size else (0, depth - 1)
    slices = sorted({int(round(lo + f * (hi - lo))) for f in ((0.25, 0.5, 0.75) if depth > 1 else (0.5,))})
    vmin, vmax = np.percentile(image, (1, 99)) if image.size else (0.0, 1.0)
    values = [int(v) for v in np.unique(label_map) if v != 0]
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, len(slices), figsize=(3.2 * len(slices), 3.4), squeeze=False)
    for ax, k in zip(axes[0], slices):
        # arrays are (i, j[, k]); show i left-right and j bottom-up
        ax.imshow(image[:, :, k].T, cmap="gray", vmin=vmin, vmax=vmax, origin="lower", interpolation="none")
        for v in values:
            mask = (label_map[:, :, k] == v).T
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=[cmap((v - 1) % 10)], linewidths=0.8, origin="lower")
        ax.set_title(f"slice {k}" if depth > 1 else "", fontsize=8)
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_png(fig, path, dpi=80)


def plot_metric_curves(
    curves: Mapping[str, Sequence[tuple[int, float]]],
    path: str | os.PathLike,
    *,
    metric: str,
    title: str = "",
) -> Path:
    """PNG overlaying one metric's history per run: ``curves`` maps a legend label to its
    (step, value) pairs (step = epoch for the bundles' validation metrics); empty histories are
    not drawn, and a picture with none says so."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(7.0, 4.5), dpi=100)
    axes = figure.add_subplot()
    drawn = 0
    for label, points in curves.items():
        if not points:
            continue
        steps, values = zip(*sorted(points), strict=True)
        axes.plot(steps, values, marker="o", markersize=3, label=label)
        drawn += 1
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("epoch (step)")
    axes.set_ylabel(metric)
    axes.set_title(title or metric)
    axes.grid(True, alpha=0.3)
    if drawn:
        axes.legend(fontsize="small")
    else:
        axes.text(0.5, 0.5, f"no run has logged {metric}", ha="center", va="center", transform=axes.transAxes)
    return save_png(figure, path)
