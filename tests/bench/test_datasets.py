"""The benchmark datasets of bench/datasets.py: geometry, intensities and labels as documented,
the same files for the same seed."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from bench.datasets import CT_ANISO_LABELS, CT_ANISO_SHAPE, MR_LABELS, generate_dataset


def _scans(manifest):
    frame = pd.read_csv(manifest)
    for rec in frame.to_dict("records"):
        image = nib.load(manifest.parent / rec["image"])
        label = np.asarray(nib.load(manifest.parent / rec["label"]).dataobj)
        yield rec, np.asarray(image.dataobj), label, np.linalg.norm(image.affine[:3, :3], axis=0)


def _digest(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def mr(tmp_path_factory):
    return generate_dataset("mr", tmp_path_factory.mktemp("mr"), n=3, seed=3)


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    return generate_dataset("ct_aniso", tmp_path_factory.mktemp("ct"), n=3, seed=3)


def test_mr_scans_are_1mm_mr_intensities_with_a_varying_field_of_view(mr):
    sidecar = json.loads(mr.with_suffix(".json").read_text())
    assert sidecar["labels"] == {str(k): v for k, v in MR_LABELS.items()}
    assert "modality" not in sidecar  # the planner must tell MR by the intensities
    shapes = []
    for _, image, label, spacing in _scans(mr):
        assert image.ndim == 3 and label.shape == image.shape
        assert all(64 <= s <= 96 for s in image.shape)
        np.testing.assert_allclose(spacing, [1.0, 1.0, 1.0], atol=1e-6)
        assert image.min() >= 0 and image.max() <= 300
        background = image[label == 0]
        assert np.mean(background == 0) < 0.1  # Rician noise: air is small but not zero
        assert set(np.unique(label)) == {0, 1, 2}
        assert image[label == 2].mean() > image[label == 1].mean()  # T1: white brighter than grey
        shapes.append(image.size)
    assert max(shapes) > 1.5 * min(shapes)


def test_ct_aniso_scans_are_anisotropic_hounsfield_units(ct):
    frame = pd.read_csv(ct)
    assert set(frame["split"]) == {"train", "val", "test"}
    assert json.loads(ct.with_suffix(".json").read_text())["labels"] == {
        str(k): v for k, v in CT_ANISO_LABELS.items()
    }
    for _, image, label, spacing in _scans(ct):
        assert image.shape == CT_ANISO_SHAPE and label.shape == CT_ANISO_SHAPE
        np.testing.assert_allclose(spacing, [0.7, 0.7, 5.0], atol=1e-6)
        assert image.min() >= -1024 and np.mean(image <= -900) > 0.2  # air
        assert np.percentile(image, 99.9) >= 300  # bone
        assert 0 <= np.median(image[label == 1]) <= 100  # soft tissue HU
        assert set(np.unique(label)) == {0, 1, 2}


def test_same_seed_writes_the_same_files(tmp_path, ct):
    again = generate_dataset("ct_aniso", tmp_path / "again", n=3, seed=3)
    assert _digest(again.parent) == _digest(ct.parent)
    other = generate_dataset("ct_aniso", tmp_path / "other", n=3, seed=4)
    assert _digest(other.parent) != _digest(ct.parent)


def test_unknown_dataset_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'pet'"):
        generate_dataset("pet", tmp_path)
