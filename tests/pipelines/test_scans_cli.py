"""``unet-med scans``: the table, the JSON form and an empty folder."""

from __future__ import annotations

import json

from pipelines.cli import main
from unet_med.data.writing import save_nifti


def test_scans_cli_table_json_and_empty_dir(tmp_path, capsys, random_volume, oblique_affine):
    save_nifti(random_volume(), oblique_affine, tmp_path / "a" / "ct.nii.gz")
    (tmp_path / "a" / "readme.txt").write_text("x")
    assert main(["scans", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "ct  " in out and "nifti" in out and "20x16x9" in out and "readme.txt: not a DICOM file" in out
    assert main(["scans", str(tmp_path / "a"), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["scans"][0]["scan_id"] == "ct" and doc["skipped"][0]["path"] == "readme.txt"
    (tmp_path / "empty").mkdir()
    assert main(["scans", str(tmp_path / "empty")]) == 1
    assert "no scans found" in capsys.readouterr().out
