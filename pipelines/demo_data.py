"""``unet-med demo-data``: write a synthetic demo dataset (scans, labels, manifest with splits)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo-data",
        help="write a synthetic demo dataset (2D touching blobs or 3D CT-like volumes) and its manifest",
        description="Write synthetic CT-like scans with multi-class labels and a manifest CSV with "
        "train/val/test splits (plus a JSON sidecar naming the label classes). Offline, seconds.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2D images or 3D volumes")
    parser.add_argument("--n", type=int, default=None, help="number of scans (default 40 in 2D, 12 in 3D)")
    parser.add_argument("--format", choices=("nifti", "dicom"), default="nifti", help="image file format")
    parser.add_argument("--size", type=int, default=None, help="side length in voxels (default 96 2D, 56 3D)")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from unet_med.data.demo import generate_demo_dataset
    from unet_med.data.manifest import read_manifest

    try:
        manifest = generate_demo_dataset(
            args.out, dims=args.dims, n=args.n, format=args.format, seed=args.seed, size=args.size
        )
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    counts = read_manifest(manifest)["split"].value_counts()
    parts = ", ".join(f"{s} {int(counts.get(s, 0))}" for s in ("train", "val", "test"))
    print(f"wrote {int(counts.sum())} {args.dims}D scans ({args.format}; {parts})")
    print(f"manifest: {manifest}")
    return 0
