"""Manifests: reading (missing columns named), data lists by split and cross-validation fold."""

from __future__ import annotations

import json

import pytest

from unet_med.data import manifest_datalist, read_manifest
from unet_med.data.manifest import ManifestError, manifest_class_names


def test_datalist_split_and_fold_selection(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text(
        "subject_id,image,label,split,fold\n"
        "a,img/a.nii.gz,lab/a.nii.gz,train,0\n"
        "b,img/b.nii.gz,lab/b.nii.gz,train,1\n"
        "c,img/c_0000.nii.gz;img/c_0001.nii.gz,,test,\n"
    )
    train = manifest_datalist(csv, "train")
    assert [d["subject_id"] for d in train] == ["a", "b"]
    assert train[0]["image"] == str(tmp_path / "img" / "a.nii.gz")
    test = manifest_datalist(csv, "test")
    assert test[0]["image"] == [
        str(tmp_path / "img" / "c_0000.nii.gz"),
        str(tmp_path / "img" / "c_0001.nii.gz"),
    ]
    assert "label" not in test[0]
    assert [d["subject_id"] for d in manifest_datalist(csv, "val", fold=1)] == ["b"]
    assert [d["subject_id"] for d in manifest_datalist(csv, "train", fold=1)] == ["a"]
    with pytest.raises(ManifestError, match="unknown split"):
        manifest_datalist(csv, "training")


def test_read_manifest_names_missing_columns(tmp_path):
    csv = tmp_path / "bad.csv"
    csv.write_text("subject,image,split\nx,a.nii.gz,train\n")
    with pytest.raises(ManifestError, match=r"bad.csv: missing column\(s\) subject_id, label"):
        read_manifest(csv)


def test_manifest_class_names_from_the_sidecar_or_the_default(tmp_path):
    m = tmp_path / "m.csv"
    assert manifest_class_names(m, ["background", "organ"]) == ["background", "organ"]  # no manifest yet
    m.write_text("subject_id,image,label,split\n")
    assert manifest_class_names(m, ["background", "organ"]) == ["background", "organ"]  # no sidecar
    (tmp_path / "m.json").write_text(json.dumps({"labels": {"0": "background", "1": "grey", "3": "white"}}))
    assert manifest_class_names(m, ["x"]) == ["background", "grey", "label_2", "white"]
