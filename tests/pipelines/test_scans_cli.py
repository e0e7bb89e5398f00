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


def test_scans_select_shows_each_decision_without_segmenting(tmp_path, capsys, random_volume, oblique_affine):
    from pathlib import Path

    from unet_med.dicom.synthetic import write_dicom_series

    save_nifti(random_volume(), oblique_affine, tmp_path / "ct.nii.gz")
    write_dicom_series(random_volume((20, 16, 3), 1), oblique_affine, tmp_path / "short")
    paths = write_dicom_series(
        random_volume(seed=2), oblique_affine, tmp_path / "scout", series_description="Scout"
    )
    paths[3].unlink()  # a broken localizer: not selected (a rule says why), not failed
    rules = ["--select", "slices>=8", "--select", "SeriesDescription!~/(?i)scout|localizer/"]
    args = ["scans", str(tmp_path), *rules]
    assert main(args) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert lines["ct"].endswith("selected") and "nifti" in lines["ct"]
    short = next(v for k, v in lines.items() if k.startswith("short_"))
    assert short.endswith("not selected: slices>=8 (found 3)") and "study_" in short
    scout = next(v for k, v in lines.items() if k.startswith("scout_"))
    assert scout.endswith("not selected: SeriesDescription!~/(?i)scout|localizer/")
    assert "1 scan(s) selected, 2 not selected" in out
    assert not list(tmp_path.rglob("*_seg*"))
    # the bundle's defaults: the 3D bundle wants >= 8 slices and no localizers
    bundle = Path(__file__).resolve().parents[2] / "bundles" / "unet3d"
    assert main(["scans", str(tmp_path), "--bundle", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "series_selection.json" in out and "not selected: slices>=8 (found 3)" in out
    assert main(["scans", str(tmp_path), "--select", "slices>=100"]) == 1
    assert "no scans selected" in capsys.readouterr().out


def test_scans_select_that_does_not_parse_exits_2_naming_the_position(tmp_path, capsys):
    assert main(["scans", str(tmp_path), "--select", "Modality==CT", "--select", "slices=>8"]) == 2
    err = capsys.readouterr().err
    assert "--select rule 2 'slices=>8'" in err and "at character 7" in err
