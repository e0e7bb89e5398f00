"""Manifest validation (every planted problem with its row), Decathlon and nnU-Net conversion, caching."""

from __future__ import annotations

import json

import numpy as np
import pytest
from monai.transforms import Compose, MapTransform, RandSpatialCropd

from unet_med.data import (
    make_dataset,
    manifest_datalist,
    manifest_from_decathlon,
    manifest_from_nnunet,
    manifest_labels,
    validate_manifest,
)
from unet_med.data.writing import save_nifti

AFF = np.diag([0.8, 0.8, 2.0, 1.0])


def _pair(root, name, *, shape=(12, 10, 6), label_shape=None, label_affine=None, values=(0, 1), nan=False):
    img = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    if nan:
        img[0, 0, 0] = np.nan
    lab = np.zeros(label_shape or shape, np.uint8)
    lab.flat[: len(values)] = values
    save_nifti(img, AFF, root / "img" / f"{name}.nii.gz")
    save_nifti(lab, AFF if label_affine is None else label_affine, root / "lab" / f"{name}.nii.gz")
    return f"img/{name}.nii.gz", f"lab/{name}.nii.gz"


def test_validation_reports_every_planted_problem_with_its_row(tmp_path):
    shifted = AFF.copy()
    shifted[:3, 3] = [5, 0, 0]
    rows = [
        ("good1", _pair(tmp_path, "good1"), "train"),  # row 1
        ("missing", ("img/nothere.nii.gz", "lab/good1.nii.gz"), "train"),  # row 2: missing image
        ("shape", _pair(tmp_path, "shape", label_shape=(12, 10, 5)), "train"),  # row 3: label shape
        ("geom", _pair(tmp_path, "geom", label_affine=shifted), "train"),  # row 4: label geometry
        ("classes", _pair(tmp_path, "classes", values=(0, 1, 7)), "train"),  # row 5: label 7 undeclared
        ("nan", _pair(tmp_path, "nan", nan=True), "test"),  # row 6: NaN in image
        ("good1", _pair(tmp_path, "good1b"), "test"),  # row 7: good1 also in test -> leakage
    ]
    (tmp_path / "img" / "broken.nii.gz").write_bytes(b"not a nifti")
    rows.append(("broken", ("img/broken.nii.gz", ""), "test"))  # row 8: unreadable image
    csv = tmp_path / "m.csv"
    csv.write_text(
        "subject_id,image,label,split\n" + "".join(f"{s},{i},{lab},{sp}\n" for s, (i, lab), sp in rows)
    )
    (tmp_path / "m.json").write_text(json.dumps({"labels": {"0": "background", "1": "organ"}}))
    report = validate_manifest(csv)
    assert not report.ok
    text = [str(p) for p in report.problems]
    expect = {
        2: "image file not found",
        3: "label shape (12, 10, 5) differs from image shape (12, 10, 6)",
        4: "geometry differ",
        5: "label values [7] outside the declared classes [0, 1]",
        6: "NaN/Inf",
        8: "image unreadable",
    }
    for row, needle in expect.items():
        assert any(t.startswith(f"row {row} (line {row + 1}") and needle in t for t in text), (row, text)
    assert any("subject good1 is in more than one split (test, train; rows 1, 7)" in t for t in text)
    assert any("split 'val' is empty" in t for t in text)
    assert not any(t.startswith("row 1 ") for t in text)
    assert len(report.problems) == 8
    summary = report.summary()
    assert "8 problem(s)" in summary and "row 5" in summary


def test_validation_ok_summary_and_cli_exit_codes(tmp_path, capsys):
    from pipelines.cli import main

    for name in ("a", "b", "c"):
        _pair(tmp_path, name, values=(0, 1, 2))
    csv = tmp_path / "ok.csv"
    csv.write_text(
        "subject_id,image,label,split\na,img/a.nii.gz,lab/a.nii.gz,train\nb,img/b.nii.gz,lab/b.nii.gz,val\n"
        "c,img/c.nii.gz,,test\n"
    )
    report = validate_manifest(csv)
    assert report.ok, report.summary()
    assert "splits: train 1, val 1, test 1" in report.summary() and "shapes: 12x10x6 (3)" in report.summary()
    assert main(["manifest", "validate", str(csv)]) == 0
    assert "spacing (mm): 0.8 x 0.8 x 2" in capsys.readouterr().out
    assert main(["manifest", "validate", str(csv), "--labels", "0,1"]) == 1
    out = capsys.readouterr().out
    assert "row 1 (line 2, subject a): label values [2] outside the declared classes [0, 1]" in out


def test_decathlon_conversion(tmp_path):
    root = tmp_path / "Task09_Spleen"
    train = []
    for i in range(5):
        img, lab = _pair(root, f"spleen_{i}")
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


class CountingLoad(MapTransform):
    """Deterministic step that counts how often it runs."""

    calls = 0

    def __call__(self, data):
        CountingLoad.calls += 1
        d = dict(data)
        d["image"] = np.arange(400, dtype=np.float32).reshape(1, 20, 20) + d["offset"]
        return d


@pytest.mark.parametrize("cache", ["memory", "disk", "none"])
def test_dataset_caches_the_deterministic_prefix_only(tmp_path, cache):
    CountingLoad.calls = 0
    chain = Compose(
        [CountingLoad(["image"]), RandSpatialCropd(["image"], roi_size=(4, 4), random_size=False)]
    )
    ds = make_dataset([{"offset": 0.0}, {"offset": 1000.0}], chain, cache=cache, cache_dir=tmp_path / "c")
    crops = [ds[0]["image"] for _ in range(6)]
    assert all(c.shape == (1, 4, 4) for c in crops)
    assert len({float(c[0, 0, 0]) for c in crops}) > 1  # random crop runs every time
    expected = {"memory": 2, "disk": 1, "none": 6}[cache]  # memory caches both items up front
    assert CountingLoad.calls == expected
    if cache == "disk":
        assert any((tmp_path / "c").iterdir())
    with pytest.raises(ValueError, match="cache must be one of"):
        make_dataset([], chain, cache="ram")
