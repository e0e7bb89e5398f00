"""The ``unet-med`` console command: version, help and the presets table."""

from __future__ import annotations

import json
import subprocess
import sys

from pipelines.cli import main
from unet_med import __version__


def test_version_and_help_work_from_the_installed_script() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"unet-med {__version__}"
    help_text = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "presets" in help_text


def test_presets_json_lists_every_preset_with_paper_sizes(capsys) -> None:
    assert main(["presets", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"paper", "keras", "vgg16", "cicek3d"}
    assert set(rows["paper"]) == {
        "name",
        "spatial_dims",
        "input_size",
        "output_size",
        "parameters",
        "conv_layers",
    }
    assert rows["paper"]["input_size"] == [572, 572] and rows["paper"]["output_size"] == [388, 388]
    assert rows["paper"]["parameters"] == 31_030_658 and rows["paper"]["conv_layers"] == 23
    assert rows["cicek3d"]["output_size"] == [44, 44, 28] and rows["cicek3d"]["spatial_dims"] == 3


def test_presets_table_is_readable(capsys) -> None:
    assert main(["presets"]) == 0
    table = capsys.readouterr().out
    assert "572x572 -> 388x388" in table and "132x132x116 -> 44x44x28" in table
    assert "31,030,658" in table


def test_no_subcommand_prints_help_and_fails(capsys) -> None:
    assert main([]) == 2
    assert "usage: unet-med" in capsys.readouterr().out
