"""Decathlon and nnU-Net datasets converted into manifests."""

from __future__ import annotations

import json

import numpy as np
import pytest

from unet_med.data import manifest_datalist, manifest_from_decathlon, manifest_from_nnunet, manifest_labels
from unet_med.data.validation import validate_manifest
from unet_med.data.writing import save_nifti

AFF = np.diag([0.8, 0.8, 2.0, 1.0])


def test_decathlon_conversion(tmp_path, image_label_pair):
    root = tmp_path / "Task09_Spleen"
    train = []
    for i in range(5):
        img, lab = image_label_pair(root, f"spleen_{i}")
        train.append({"image": f"./{img}", "label": f"./{lab}"})
    save_nifti(np.zeros((12, 10, 6), np.float32), AFF, root / "imagesTs" / "spleen_9.nii.gz")
    doc = {"name": "Spleen", "labels": {"0": "background", "1": "spleen"}, "training": train,
           "test": ["./imagesTs/spleen_9.nii.gz"]}  # fmt: skip
    (root / "dataset.json").write_text(json.dumps(doc))
    out = manifest_from_decathlon(
        root / "dataset.json", tmp_path / "manifests" / "spleen.csv", val_fraction=0.2
    )
    assert manifest_labels(out) == {0: "background", 1: "spleen"}
    train_items, val_items = manifest_datalist(out, "train"), manifest_datalist(out, "val")
    test_items = manifest_datalist(out, "test")
    assert len(train_items) == 4 and len(val_items) == 1 and len(test_items) == 1
    assert test_items[0]["subject_id"] == "spleen_9" and "label" not in test_items[0]
    assert out.read_text().splitlines()[1].split(",")[1].startswith("../Task09_Spleen/img/")  # relative
    assert validate_manifest(out).ok
    (root / "bad.json").write_text(json.dumps({"training": [{"image": "x.nii.gz"}]}))
    with pytest.raises(ValueError, match=r"bad.json: training entry 0 needs 'image' and 'label'"):
        manifest_from_decathlon(root / "bad.json")


def test_nnunet_conversion_with_channels(tmp_path):
    root = tmp_path / "Dataset001_Demo"
    for case in ("case_a", "case_b", "case_c"):
        for ch in (0, 1):
            save_nifti(np.full((8, 8, 4), ch, np.float32), AFF, root / "imagesTr" / f"{case}_{ch:04d}.nii.gz")
        save_nifti(np.zeros((8, 8, 4), np.uint8), AFF, root / "labelsTr" / f"{case}.nii.gz")
    for ch in (0, 1):
        save_nifti(np.zeros((8, 8, 4), np.float32), AFF, root / "imagesTs" / f"case_t_{ch:04d}.nii.gz")
    (root / "dataset.json").write_text(
        json.dumps({"channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "tumour": 1},
                    "numTraining": 3, "file_ending": ".nii.gz"})
    )  # fmt: skip
    out = manifest_from_nnunet(root, val_fraction=0.34)
    assert manifest_labels(out) == {0: "background", 1: "tumour"}
    items = manifest_datalist(out)
    assert sorted(d["split"] for d in items) == ["test", "train", "train", "val"]
    a = next(d for d in items if d["subject_id"] == "case_a")
    assert [p.rsplit("/", 1)[1] for p in a["image"]] == ["case_a_0000.nii.gz", "case_a_0001.nii.gz"]
    report = validate_manifest(out)
    assert report.ok, report.summary()
    from unet_med.data import load_image

    two = load_image(a["image"])  # channels stacked in order
    assert two.shape == (2, 8, 8, 4) and float(two[1].mean()) == 1.0
    (root / "labelsTr" / "case_b.nii.gz").unlink()
    with pytest.raises(ValueError, match="no label for case.*case_b"):
        manifest_from_nnunet(root)
