"""``unet-med scans DIR``: list the scans under a folder (NIfTI, DICOM series, images) and skipped files;
with ``--select`` (or ``--bundle``'s default rules), the selection decision of every scan."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipelines.infer import UsageError, add_selection_arguments, selection_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "scans",
        help="list the scans under a folder (NIfTI files, DICOM series, PNG/TIFF) and every skipped file",
        description="Find NIfTI files, DICOM series (grouped by SeriesInstanceUID, ordered along the slice "
        "normal) and 2D images under DIR, recursively. Prints scan_id, kind, number of files, shape, "
        "spacing and study per scan, then every skipped file with its reason. With --select RULE (the "
        "rules of `unet-med infer --select`) or --bundle B (its configs/series_selection.json), every scan "
        "also gets its decision: selected, or not selected with the failing rule; nothing is segmented. "
        "Exit 1 when nothing usable is found, 2 when a rule does not parse.",
    )
    parser.add_argument("directory", metavar="DIR", help="folder to search")
    parser.add_argument("--json", action="store_true", help='print {"scans": [...], "skipped": [...]}')
    parser.add_argument(
        "--bundle", type=Path, default=None, help="use this bundle's configs/series_selection.json as rules"
    )
    add_selection_arguments(parser)
    parser.set_defaults(handler=run)


def _fmt(values: list, digits: int | None = None) -> str:
    return "x".join(f"{v:.{digits}g}" if digits else str(v) for v in values)


def run(args: argparse.Namespace) -> int:
    from unet_med.data.discovery import SkipKind, discover_scans

    try:
        selection = selection_from_args(args, args.bundle)
    except UsageError as exc:
        print(f"unet-med scans: error: {exc}", file=sys.stderr)
        return 2
    try:
        found = discover_scans(args.directory, selection)
    except (FileNotFoundError, NotADirectoryError) as exc:
        print(f"error: {exc}")
        return 1
    if args.json:
        print(json.dumps(found.as_dict(), indent=2))
        return 0 if found.scans else 1
    not_selected = [s for s in found.skipped if s.kind == SkipKind.NOT_SELECTED]
    # scans a rule rejected are listed with the others; a broken series a rule rejected has no scan
    scans = found.scans + [s.scan for s in not_selected if s.scan is not None]
    scans.sort(key=lambda s: s.scan_id)
    rows = [s.as_dict() for s in scans]
    if rows:
        width = max(len("scan_id"), *(len(r["scan_id"]) for r in rows))
        tail = "  selection" if selection is not None else ""
        print(f"{'scan_id':<{width}}  {'kind':<5} {'files':>5}  {'shape':<14} {'spacing (mm)':<18} "
              f"{'study_id':<14} source{tail}")
        for r in rows:
            decision = f"  {r['selection']}" if selection is not None else ""
            print(
                f"{r['scan_id']:<{width}}  {r['kind']:<5} {r['files']:>5}  {_fmt(r['shape']):<14} "
                f"{_fmt(r['spacing'], 4):<18} {r['study_id'] or '-':<14} {r['source']}{decision}"
            )
    for s in not_selected:
        if s.scan is None:
            print(f"{s.scan_id}  (series in {s.path}, irregular geometry)  {s.reason}")
    if selection is not None:
        print(f"series selection ({selection.origin}): {selection.describe()}")
        print(f"{len(found.scans)} scan(s) selected, {len(not_selected)} not selected in {found.root}")
    else:
        print(f"{len(rows)} scan(s) in {found.root}")
    others = [s for s in found.skipped if s.kind != SkipKind.NOT_SELECTED]
    if others:
        print(f"skipped {len(others)}:")
        for s in others:
            print(f"  {s.path}: {s.reason}")
    if not found.scans:
        print(f"error: no scans {'selected' if not_selected else 'found'} in {args.directory}")
        return 1
    return 0
