"""``unet-med scans DIR``: list the scans under a folder (NIfTI, DICOM series, images) and skipped files."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scans",
        help="list the scans under a folder (NIfTI files, DICOM series, PNG/TIFF) and every skipped file",
        description="Find NIfTI files, DICOM series (grouped by SeriesInstanceUID, ordered along the slice "
        "normal) and 2D images under DIR, recursively. Prints scan_id, kind, number of files, shape and "
        "spacing per scan, then every skipped file with its reason. Exit 1 when nothing usable is found.",
    )
    parser.add_argument("directory", metavar="DIR", help="folder to search")
    parser.add_argument("--json", action="store_true", help='print {"scans": [...], "skipped": [...]}')
    parser.set_defaults(handler=run)


def _fmt(values: list, digits: int | None = None) -> str:
    return "x".join(f"{v:.{digits}g}" if digits else str(v) for v in values)


def run(args: argparse.Namespace) -> int:
    from unet_med.data.discovery import discover_scans

    try:
        found = discover_scans(args.directory)
    except (FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {exc}")
        return 1
    if args.json:
        print(json.dumps(found.as_dict(), indent=2))
        return 0 if found.scans else 1
    rows = [s.as_dict() for s in found.scans]
    if rows:
        width = max(len("scan_id"), *(len(r["scan_id"]) for r in rows))
        print(f"{'scan_id':<{width}}  {'kind':<5} {'files':>5}  {'shape':<14} {'spacing (mm)':<18} source")
        for r in rows:
            print(
                f"{r['scan_id']:<{width}}  {r['kind']:<5} {r['files']:>5}  {_fmt(r['shape']):<14} "
                f"{_fmt(r['spacing'], 4):<18} {r['source']}"
            )
    print(f"{len(rows)} scan(s) in {found.root}")
    if found.skipped:
        print(f"skipped {len(found.skipped)}:")
        for s in found.skipped:
            print(f"  {s.path}: {s.reason}")
    if not rows:
        print(f"error: no scans found in {args.directory}")
        return 1
    return 0
