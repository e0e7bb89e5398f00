"""``unet-med plan``: writes the plan and prints its choices and the training command; exit codes
0 / 1 (bad data, naming the scan) / 2 (usage); the fingerprint cached beside the plan."""

from __future__ import annotations

import json

import pytest

from pipelines.cli import main


def test_plan_command_writes_the_plan_prints_the_choices_and_reuses_the_fingerprint(
    phantom, write_dataset, tmp_path, capsys, caplog
):
    manifest = write_dataset("mr", [phantom("mr", seed=s) for s in range(3)])
    out = tmp_path / "out" / "PLAN.json"
    args = ["plan", str(manifest), "--output", str(out), "--bundle", "bundles/unet3d", "--base-width", "4",
            "--memory-budget-mb", "700", "--no-progress"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    plan = json.loads(out.read_text())
    assert plan["bundle"] == "unet3d" and plan["normalization"] == "zscore_foreground"
    assert plan["base_width"] == 4 and plan["_planned_with_"]["memory_budget_mb"] == 700
    for text in ("zscore_foreground", "x".join(map(str, plan["patch_size"])).replace("x", " x "),
                 f"wrote {out}", plan["training_command"]):  # fmt: skip
        assert text in printed
    assert f"'{out}']\"" in plan["training_command"]
    assert (tmp_path / "out" / "fingerprint.json").is_file()
    caplog.clear()
    with caplog.at_level("INFO", logger="unet_med.planning"):
        assert main(args + ["--modality", "MR"]) == 0  # an explicit override: recomputed
        assert main(args + ["--modality", "MR"]) == 0
    assert "computing" in caplog.records[0].getMessage() and "reusing" in caplog.records[-1].getMessage()


def test_bad_data_exits_1_naming_the_scan(phantom, write_dataset, tmp_path, capsys):
    manifest = write_dataset("z", [phantom("normalised", seed=s) for s in range(3)])
    out = tmp_path / "PLAN.json"
    assert main(["plan", str(manifest), "--output", str(out), "--no-progress"]) == 1
    assert "error: scan case00 (" in capsys.readouterr().out
    assert not out.exists()


def test_usage_errors_exit_2(phantom, write_dataset, tmp_path, capsys, monkeypatch):
    manifest = write_dataset("ct", [phantom("ct", seed=s) for s in range(3)])
    monkeypatch.chdir(tmp_path)  # the default --output is ./PLAN.json
    assert main(["plan", str(tmp_path / "missing.csv")]) == 2
    assert "manifest file not found" in capsys.readouterr().out
    assert main(["plan", str(manifest), "--bundle", "bundles/segresnet"]) == 2
    assert "unknown bundle" in capsys.readouterr().out
    assert main(["plan", str(manifest), "--memory-budget-mb", "0"]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", str(manifest), "--modality", "PET"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "PLAN.json").exists()
