"""Shared fixtures: small scans with rotated, anisotropic geometry, and a tiny 3D inference bundle
with scans to segment (batch inference library and ``unet-med infer`` tests)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

# A right-handed, rotated, anisotropic RAS affine (as a DICOM series has).
OBLIQUE_AFFINE = np.array(
    [[-0.7 * np.cos(0.3), 0.7 * np.sin(0.3), 0, 12.0], [-0.7 * np.sin(0.3), -0.7 * np.cos(0.3), 0, -8.0],
     [0, 0, 2.5, 40.0], [0, 0, 0, 1]]
)  # fmt: skip

INFER_LABELS = ["background", "organ", "lesion"]


@pytest.fixture
def oblique_affine() -> np.ndarray:
    """A rotated, anisotropic (0.7 x 0.7 x 2.5 mm) RAS affine."""
    return OBLIQUE_AFFINE.copy()


@pytest.fixture
def random_volume() -> Callable[..., np.ndarray]:
    """``random_volume(shape=(20, 16, 9), seed=0)``: int16 values in -1000..1499 (HU-like)."""

    def volume(shape: tuple[int, ...] = (20, 16, 9), seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).integers(-1000, 1500, shape).astype(np.int16)

    return volume


def ball_volume(shape, seed) -> np.ndarray:
    """A bright ball (HU -200) in a dark noisy background (HU -500)."""
    rng = np.random.default_rng(seed)
    zz = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    ball = (zz**2).sum(0) < 0.5
    return (ball * 300 - 500 + rng.normal(0, 30, shape)).astype(np.int16)


@pytest.fixture(scope="session")
def infer_bundle(tmp_path_factory) -> Path:
    """A bundle folder whose inference.json has the agreed ids and a resampling preprocessing."""
    from unet_med.networks import UNet

    root = tmp_path_factory.mktemp("bundle")
    (root / "configs").mkdir()
    (root / "models").mkdir()
    config = {
        "imports": [
            "$import unet_med.inferers",
            "$import unet_med.inference.postprocessing",
            "$import unet_med.transforms",
        ],
        "device": "$torch.device('cpu')",
        "class_names": INFER_LABELS,
        "network_def": {
            "_target_": "unet_med.networks.UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 3,
            "widths": [2, 4],
        },
        "inferer": {
            "_target_": "unet_med.inferers.OverlapTileInferer",
            "output_tile_size": 12,
            "sw_batch_size": 2,
        },
        # the project's chain: LoadImaged (skipped by the command), orientation, resampling,
        # a foreground crop and the CT window; all spatial steps must be undone for the outputs
        "preprocessing": {
            "_target_": "unet_med.transforms.inference_transforms",
            "keys": ["image"],
            "spacing": [1.0, 1.0, 2.0],
            "window": [-500, 500],
            "crop_foreground": True,
            "foreground_threshold": -350,
            "foreground_margin": 2,
        },
        "postprocessing": {
            "_target_": "unet_med.inference.postprocessing.postprocessing_transforms",
            "preprocessing": "@preprocessing",
            "largest_component": True,
        },
    }
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    (root / "configs" / "metadata.json").write_text(json.dumps({"name": "tiny3d", "version": "0.0.1"}))
    torch.manual_seed(0)
    net = UNet(3, 1, 3, widths=(2, 4))
    with torch.no_grad():  # make the untrained net segment the bright ball as label 1
        net.head[-1].bias.copy_(torch.tensor([0.0, -0.2, -3.0]))
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="session")
def infer_scans(tmp_path_factory) -> Path:
    """Two NIfTI scans (``ct_a.nii.gz``, ``sub/ct_b.nii.gz``) and one DICOM series (``series1``),
    all rotated and anisotropic."""
    from unet_med.data.demo import rotated_scan_affine
    from unet_med.data.writing import save_nifti
    from unet_med.dicom.synthetic import write_dicom_series

    root = tmp_path_factory.mktemp("scans")
    save_nifti(
        ball_volume((22, 18, 9), 1),
        rotated_scan_affine((0.9, 0.8, 2.5), 12, (10, -20, 30)),
        root / "ct_a.nii.gz",
    )
    b_affine = rotated_scan_affine((1.1, 1.1, 3.0), -8, (0, 5, -40))
    save_nifti(ball_volume((17, 20, 7), 2), b_affine, root / "sub" / "ct_b.nii.gz")
    write_dicom_series(
        ball_volume((20, 16, 8), 3),
        rotated_scan_affine((0.7, 0.7, 2.0), 20, (-30, 15, 60)),
        root / "series1",
        series_uid="1.2.826.0.1.3680043.8.498.1",
        subject="SECRETNAME",
    )
    return root
