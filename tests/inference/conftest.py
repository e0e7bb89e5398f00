"""Fixtures of the inference tests: a tiny bundle whose preprocessing reads the plan's ids, and
training-run folders (``models/model.pt`` with ``network.json``) to ensemble."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from unet_med.networks import UNet


@pytest.fixture
def planned_bundle(infer_bundle, tmp_path) -> Path:
    """A copy of the shared tiny 3D bundle whose preprocessing takes the plan ids
    (``normalization``, ``intensity_*``, ``spacing``, ``resample_order_image``) by reference, as
    the project's bundles do; no foreground crop, so shapes follow the spacing alone."""
    root = tmp_path / "bundle"
    shutil.copytree(infer_bundle, root)
    config_path = root / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config.update(
        normalization="ct",
        window=[-500, 500],
        intensity_clip=None,
        intensity_mean=None,
        intensity_std=None,
        spacing=[1.0, 1.0, 2.0],
        resample_order_image=1,
        resample_order_label=0,
    )
    config["preprocessing"] = {
        "_target_": "unet_med.transforms.inference_transforms",
        "keys": ["image"],
        "spacing": "@spacing",
        "intensity": "@normalization",
        "window": "@window",
        "intensity_clip": "@intensity_clip",
        "intensity_mean": "@intensity_mean",
        "intensity_std": "@intensity_std",
        "resample_order_image": "@resample_order_image",
    }
    config_path.write_text(json.dumps(config, indent=1))
    return root


@pytest.fixture
def training_run() -> Callable[..., Path]:
    """``training_run(folder, widths=(2, 4), seed=0, plan=None)``: a training output folder with
    ``models/model.pt`` (a tiny 3D UNet, 1 -> 3 channels), ``models/network.json`` and, given a
    plan dict, ``models/plan.json``; returns the checkpoint path."""

    def make(folder: Path, widths=(2, 4), seed: int = 0, plan: dict | None = None) -> Path:
        torch.manual_seed(seed)
        net = UNet(3, 1, 3, widths=tuple(widths))
        models = Path(folder) / "models"
        models.mkdir(parents=True)
        torch.save(net.state_dict(), models / "model.pt")
        (models / "network.json").write_text(json.dumps({"_target_": "unet_med.networks.UNet", **net.config}))
        if plan is not None:
            (models / "plan.json").write_text(json.dumps(plan))
        return models / "model.pt"

    return make
