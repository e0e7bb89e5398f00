"""Starting tiny trainings of the 2D paper bundle in subprocesses, for the tracking tests."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "unet2d_paper"
# Smallest useful training: 2 epochs, width 4, 4x4 output patches, no augmentation.
TINY = {"epochs": "2", "base_width": "4", "patch_size": "[4,4]", "aug_prob": "0", "num_workers": "0"}


def demo_manifest(out_dir: Path) -> Path:
    """A 6-image 64x64 demo dataset (4 train, 1 val, 1 test); returns the manifest path."""
    from unet_med.data.demo import generate_demo_dataset

    return generate_demo_dataset(out_dir, dims=2, n=6, size=64, seed=0)


@dataclass
class Training:
    """A ``python -m monai.bundle run training`` subprocess writing its output to ``log``."""

    process: subprocess.Popen
    output_dir: Path
    log: Path

    def finish(self, timeout_s: float) -> None:
        """Wait for the training; fail with the end of its log when it fails or runs too long."""
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            code = f"killed after {timeout_s:g} s"
        if code != 0:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise AssertionError(f"training in {self.output_dir} ended with {code}:\n{tail}")


def start_training(output_dir: Path, manifest: Path, overrides: dict[str, str]) -> Training:
    """Start a tiny training of the 2D paper bundle into ``output_dir``; ``overrides`` (bundle ids
    to values) replace or add to :data:`TINY`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    log = output_dir / "training.log"
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--workflow_name",
        "unet_med.bundle.UNetMedWorkflow",
        "--config_file",
        str(BUNDLE / "configs" / "training.json"),
        "--meta_file",
        str(BUNDLE / "configs" / "metadata.json"),
        "--bundle_root",
        str(BUNDLE),
        "--output_dir",
        str(output_dir),
        "--manifest",
        str(manifest),
        *[item for key, value in {**TINY, **overrides}.items() for item in (f"--{key}", value)],
    ]
    with open(log, "wb") as stream:
        process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, cwd=output_dir)
    return Training(process, output_dir, log)
