"""Manifest validation: every planted problem with its row, the summary, the command's exit codes."""

from __future__ import annotations

import json

import numpy as np

from unet_med.data.validation import validate_manifest

AFF = np.diag([0.8, 0.8, 2.0, 1.0])


def test_validation_reports_every_planted_problem_with_its_row(tmp_path, image_label_pair):
    shifted = AFF.copy()
    shifted[:3, 3] = [5, 0, 0]
    rows = [
        ("good1", image_label_pair(tmp_path, "good1"), "train"),  # row 1
        ("missing", ("img/nothere.nii.gz", "lab/good1.nii.gz"), "train"),  # row 2: missing image
        (
            "shape",
            image_label_pair(tmp_path, "shape", label_shape=(12, 10, 5)),
            "train",
        ),  # row 3: label shape
        ("geom", image_label_pair(tmp_path, "geom", label_affine=shifted), "train"),  # row 4: label geometry
        (
            "classes",
            image_label_pair(tmp_path, "classes", values=(0, 1, 7)),
            "train",
        ),  # row 5: label 7 undeclared
        ("nan", image_label_pair(tmp_path, "nan", nan=True), "test"),  # row 6: NaN in image
        ("good1", image_label_pair(tmp_path, "good1b"), "test"),  # row 7: good1 also in test -> leakage
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


def test_validation_ok_summary_and_cli_exit_codes(tmp_path, capsys, image_label_pair):
    from pipelines.cli import main

    for name in ("a", "b", "c"):
        image_label_pair(tmp_path, name, values=(0, 1, 2))
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
