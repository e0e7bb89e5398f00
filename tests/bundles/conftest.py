"""The bundles' command lines as the README documents them, for the end-to-end tests."""

import subprocess
import sys
from pathlib import Path

import pytest

from unet_med.bundle import WORKFLOW_NAME

ROOT = Path(__file__).resolve().parents[2]


def _bundle_command(bundle, run_id, configs, out, manifest, *extra, meta=True, workflow=True):
    """``python -m monai.bundle run <run_id> --workflow_name ... --config_file ...`` of a bundle
    with a tiny network (base width 2, 4 iterations per epoch) reading ``manifest`` and writing into
    ``out``; the other planned ids come from the data (planning on first use)."""
    configs_dir = ROOT / "bundles" / bundle / "configs"
    files = [str(configs_dir / c) for c in configs]
    command = [sys.executable, "-m", "monai.bundle", "run", run_id]
    if workflow:
        command += ["--workflow_name", WORKFLOW_NAME]
    if meta:
        command += ["--meta_file", str(configs_dir / "metadata.json")]
    command += [
        "--config_file", files[0] if len(files) == 1 else str(files),
        "--bundle_root", str(ROOT / "bundles" / bundle),
        "--output_dir", str(out), "--manifest", str(manifest), "--base_width", "2", "--num_workers", "0",
        "--iterations_per_epoch", "4",
        *extra,
    ]
    return command


def _run_ok(command, cwd):
    """Run ``command``; its output, or a failure showing the end of it."""
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


@pytest.fixture(scope="session")
def bundle_command():
    return _bundle_command


@pytest.fixture(scope="session")
def run_ok():
    return _run_ok
