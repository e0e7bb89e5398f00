"""Demo data generator: splits, dtypes, classes, touching objects, geometry, determinism."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from unet_med.data import (
    generate_demo_dataset,
    load_image,
    manifest_datalist,
    manifest_labels,
    manifest_sha256,
    read_manifest,
)


def test_demo_2d_manifest_splits_classes_and_touching_objects(tmp_path):
    manifest = generate_demo_dataset(tmp_path / "d2", dims=2, n=8, size=64, seed=3)
    frame = read_manifest(manifest)
    assert list(frame.columns[:5]) == ["row", "subject_id", "image", "label", "split"]
    assert set(frame["split"]) == {"train", "val", "test"}
    assert manifest_labels(manifest) == {0: "background", 1: "cell", 2: "dense_cell"}
    seen_classes: set[int] = set()
    touching = 0
    for item in manifest_datalist(manifest):
        img, lab = load_image(item["image"], dtype=None), load_image(item["label"], dtype=None)
        assert img.shape == lab.shape == (1, 64, 64)
        assert img.dtype.is_floating_point is False and str(img.dtype) == "torch.int16"
        assert np.allclose(img.affine, lab.affine)
        assert not np.allclose(img.affine[:2, :2], np.diag(np.diag(img.affine[:2, :2])))  # rotated
        lab_np = lab[0].numpy()
        seen_classes |= set(np.unique(lab_np).tolist())
        # Touching objects: a component whose 2-px dilation reaches another one (separated by a 1-px gap).
        comps, n = ndimage.label(lab_np > 0)
        for a in range(1, n + 1):
            grown = ndimage.binary_dilation(comps == a, iterations=2)
            if np.any(grown & (comps > 0) & (comps != a)):
                touching += 1
                break
    assert seen_classes == {0, 1, 2}
    assert touching >= 4


def test_demo_is_deterministic_per_seed(tmp_path):
    a = generate_demo_dataset(tmp_path / "a", dims=2, n=3, size=48, seed=1)
    b = generate_demo_dataset(tmp_path / "b", dims=2, n=3, size=48, seed=1)
    c = generate_demo_dataset(tmp_path / "c", dims=2, n=3, size=48, seed=2)
    im = [load_image(manifest_datalist(m)[0]["image"]) for m in (a, b, c)]
    assert manifest_sha256(a) == manifest_sha256(b)
    assert np.array_equal(im[0], im[1]) and not np.array_equal(im[0], im[2])


def test_demo_3d_dicom_is_ct_like_with_anisotropic_rotated_geometry(tmp_path):
    manifest = generate_demo_dataset(tmp_path / "d3", dims=3, n=3, size=32, format="dicom", seed=0)
    item = manifest_datalist(manifest, "train")[0]
    assert (tmp_path / "d3" / "images" / item["subject_id"]).is_dir()
    img, lab = load_image(item["image"], dtype=None), load_image(item["label"], dtype=None)
    assert img.shape == lab.shape == (1, 32, 32, 22)
    assert str(img.dtype) == "torch.int16" and img.min() <= -900 and img.max() > 100  # air and tissue in HU
    assert np.allclose(img.affine, lab.affine, atol=1e-4)
    spacing = np.linalg.norm(np.asarray(img.affine)[:3, :3], axis=0)
    assert np.allclose(spacing, [0.8, 0.8, 2.5], atol=1e-4)
    assert set(np.unique(lab.numpy()).tolist()) == {0, 1, 2}
