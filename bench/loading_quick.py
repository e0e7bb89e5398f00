"""Load time per volume of a 512x512x120 int16 CT stored as NIfTI (.nii.gz and .nii) and as a DICOM series.

Usage: python bench/loading_quick.py [--repeats 3] [--workdir DIR]
Writes the volume once in each format, then times ``unet_med.data.load_image`` (MONAI LoadImage with
ScanReader: nibabel for NIfTI; pydicom header check + SimpleITK for the series) and prints the median.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from unet_med.data import load_image
from unet_med.data.writing import save_nifti
from unet_med.dicom.synthetic import write_dicom_series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    shape = (512, 512, 120)
    affine = np.diag([-0.7, -0.7, 2.5, 1.0])
    rng = np.random.default_rng(0)
    vol = (rng.normal(0, 40, shape) + np.where(rng.random(shape) < 0.5, -1000, 40)).astype(np.int16)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        root = Path(tmp)
        sources = {
            "nifti .nii.gz": save_nifti(vol, affine, root / "ct.nii.gz"),
            "nifti .nii": save_nifti(vol, affine, root / "ct.nii"),
        }
        write_dicom_series(vol, affine, root / "ct_dicom")
        sources["dicom series (120 files)"] = root / "ct_dicom"
        for name, src in sources.items():
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                img = load_image(src, dtype=None)
                times.append(time.perf_counter() - t0)
            assert tuple(img.shape) == (1, *shape) and np.array_equal(img[0].numpy(), vol)
            print(f"{name:<26} median {np.median(times):6.2f} s  (min {min(times):.2f}, {args.repeats} runs)")


if __name__ == "__main__":
    main()
