"""``unet-med demo-data``: writes a dataset and reports its splits."""

from __future__ import annotations

from pipelines.cli import main


def test_demo_data_cli(tmp_path, capsys):
    assert main(["demo-data", "--out", str(tmp_path / "cli"), "--dims", "3", "--n", "3", "--size", "24"]) == 0
    out = capsys.readouterr().out
    assert "train 1, val 1, test 1" in out and (tmp_path / "cli" / "manifest.csv").is_file()
