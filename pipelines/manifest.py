"""``unet-med manifest``: validate a dataset manifest, or convert a Decathlon / nnU-Net dataset into one."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "manifest",
        help="validate a manifest CSV, or convert a Decathlon/nnU-Net dataset into one",
        description="Dataset manifests (CSV: subject_id, image, label, split[, fold]).",
    )
    sub = parser.add_subparsers(dest="manifest_command", metavar="ACTION", required=True)
    validate = sub.add_parser(
        "validate",
        help="check every row and file; exit 1 with the list of problems, 0 with a summary",
        description="Check a manifest before training: missing or unreadable files, image/label shape or "
        "geometry mismatch, label values outside the declared classes, NaN/Inf in images, subjects in "
        "more than one split, empty train/val splits. Every problem is listed with its row.",
    )
    validate.add_argument("file", metavar="FILE", help="manifest CSV")
    validate.add_argument(
        "--labels", default=None,
        help="declared label values, e.g. 0,1,2 (default: the 'labels' of the manifest's JSON sidecar)",
    )  # fmt: skip
    validate.set_defaults(handler=run_validate)
    for name, what, target in (
        ("from-decathlon", "a Medical Segmentation Decathlon dataset.json", "DATASET_JSON"),
        ("from-nnunet", "an nnU-Net raw dataset folder (imagesTr/, labelsTr/)", "FOLDER"),
    ):
        conv = sub.add_parser(
            name, help=f"write a manifest from {what}", description=f"Write a manifest from {what}."
        )
        conv.add_argument("source", metavar=target)
        conv.add_argument(
            "--out", default=None, help="manifest CSV to write (default: manifest.csv in the dataset)"
        )
        conv.add_argument(
            "--val-fraction", type=float, default=0.2, help="training cases put in the val split"
        )
        conv.add_argument("--seed", type=int, default=0, help="seed of the train/val draw")
        conv.set_defaults(handler=run_convert, converter=name)


def run_validate(args: argparse.Namespace) -> int:
    from unet_med.data.validation import validate_manifest

    labels = None
    if args.labels:
        try:
            labels = [int(v) for v in args.labels.split(",") if v.strip()]
        except ValueError:
            print(f"error: --labels takes comma-separated integers, got {args.labels!r}")
            return 2
    report = validate_manifest(args.file, labels=labels)
    print(report.summary())
    return 0 if report.ok else 1


def run_convert(args: argparse.Namespace) -> int:
    from unet_med.data.converters import manifest_from_decathlon, manifest_from_nnunet
    from unet_med.data.manifest import read_manifest

    convert = manifest_from_decathlon if args.converter == "from-decathlon" else manifest_from_nnunet
    try:
        out = convert(args.source, args.out, val_fraction=args.val_fraction, seed=args.seed)
    except ValueError as exc:
        print(f"error: {exc}")
        return 1
    counts = read_manifest(out)["split"].value_counts()
    print(f"wrote {out} ({', '.join(f'{s} {int(counts.get(s, 0))}' for s in ('train', 'val', 'test'))})")
    return 0
