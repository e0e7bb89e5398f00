"""``unet-med watch``: segment what is dropped into an inbox folder, until stopped.

The command line around :class:`unet_med.inference.inbox.InboxWatcher` (settling, claiming,
moving, resuming: see that module): it loads the bundle once with the same model and output options
as ``unet-med infer`` (:func:`pipelines.infer.add_segmenter_options`), turns SIGTERM and Ctrl-C
into a stop between scans, and maps problems to exit codes.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from pipelines.infer import (
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_segmenter_options,
    add_selection_arguments,
    segmenter_from_args,
    selection_from_args,
)

EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C

EPILOG = """\
what is picked up (a "drop"): a NIfTI/PNG/TIFF file or a folder (DICOM series and/or NIfTI files,
  e.g. one folder per study or series as DICOM receivers write them) at the top of INBOX, once no
  file in it was added, removed or changed for --settle seconds; names starting with "." are ignored
  (uploaders write under hidden temporary names). Loose DICOM files at the top are not a series:
  they are reported as failed.

where inputs go (all inside INBOX, by rename):
  INBOX/.work/<key>/   while being segmented (resumed here after a kill or a stop)
  INBOX/.done/<key>    every scan of it ok
  INBOX/.failed/<key>  a scan failed or nothing in it was a scan (report.csv says why)
  <key> is the drop's name made file-name safe; a name reported before gets -2, -3, ...

outputs (in OUT_DIR): as unet-med infer: <scan_id>_seg.nii.gz, <scan_id>_qc.png, <scan_id>_seg.dcm
  (--dicom-seg), and report.csv with one row added per scan (rewritten atomically each time)

stopping: SIGTERM or Ctrl-C stops after the scan in progress (a second one stops at once; outputs
  are written atomically either way). A restart re-does nothing complete.

exit codes:
  0    stopped by SIGTERM or Ctrl-C (failed scans are in report.csv, not in the exit code)
  2    usage error: bundle or checkpoint unusable, INBOX missing or not writable, OUT_DIR/report.csv
       of another bundle, another unet-med watch on the same INBOX or OUT_DIR
  130  interrupted by a second SIGTERM or Ctrl-C inside a scan (that scan is redone at the next start)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "watch",
        help="segment NIfTI files and DICOM series dropped into an inbox folder, until stopped",
        description="Watch INBOX (by polling: works on NFS/SMB shares, where inotify does not) and "
        "segment every file or folder dropped into it once it has settled, with the bundle loaded "
        "once; outputs and report.csv rows go to OUT_DIR, finished inputs move to INBOX/.done or "
        "INBOX/.failed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--inbox", type=Path, metavar="INBOX", help="the watched folder")
    parser.add_argument("--output", type=Path, metavar="OUT_DIR", help="folder for outputs and report.csv")
    parser.add_argument(
        "--settle",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="a drop is taken once nothing in it changed for this long (default 5); longer than the "
        "longest pause of whatever copies into INBOX",
    )
    parser.add_argument(
        "--poll",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds between two looks at INBOX (default: settle / 5, at most 1)",
    )
    add_segmenter_options(parser)
    add_selection_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from unet_med.data.manifest import ManifestError
    from unet_med.inference import BundleError
    from unet_med.inference.inbox import InboxBusyError

    try:
        return _run(args)
    except (UsageError, BundleError, ManifestError, InboxBusyError) as exc:
        print(f"unet-med watch: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    missing = [f"--{n}" for n in ("bundle", "inbox", "output") if getattr(args, n) is None]
    if missing:
        raise UsageError(f"missing {', '.join(missing)}")
    if not args.inbox.is_dir():
        raise UsageError(f"inbox folder not found: {args.inbox}")
    if not _writable(args.inbox):
        raise UsageError(f"inbox folder {args.inbox} is not writable: finished inputs are moved to "
                         f"{args.inbox}/.done and {args.inbox}/.failed")
    if not args.bundle.is_dir():
        raise UsageError(f"bundle folder not found: {args.bundle}")
    if args.settle < 0 or (args.poll is not None and args.poll <= 0):
        raise UsageError(f"--settle must be >= 0 and --poll > 0 seconds, got {args.settle} and {args.poll}")
    if args.inbox.resolve() == args.output.resolve() or args.inbox.resolve() in args.output.resolve().parents:
        raise UsageError(f"--output {args.output} must not be inside the inbox {args.inbox}")
    poll = args.poll if args.poll is not None else min(1.0, max(args.settle / 5, 0.05))

    from unet_med.inference.inbox import InboxWatcher

    selection = selection_from_args(args, args.bundle)
    segmenter = segmenter_from_args(args)
    if selection is not None:
        print(f"series selection ({selection.origin}): {selection.describe()}")
    stop = threading.Event()
    try:
        watcher = InboxWatcher(
            segmenter, args.inbox, args.output, settle_s=args.settle, poll_s=poll, stop=stop,
            selection=selection,
        )
    except ValueError as exc:  # a report of another bundle
        raise UsageError(str(exc)) from None
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def request_stop(signum: int, frame: object) -> None:
        print(f"{signal.Signals(signum).name}: stopping after the scan in progress (again: stop now)",
              flush=True)
        stop.set()
        for s in previous:  # a second signal interrupts at once (KeyboardInterrupt)
            signal.signal(s, signal.default_int_handler)

    for s in previous:
        signal.signal(s, request_stop)
    print(f"watching {args.inbox} (settle {args.settle:g} s, poll {poll:g} s); outputs and report.csv in "
          f"{args.output}; SIGTERM or Ctrl-C stops", flush=True)
    try:
        counts = watcher.run()
    except KeyboardInterrupt:  # the second signal: stop inside a scan (its outputs are atomic)
        print("interrupted: the scan in progress is redone at the next start", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    c = counts.statuses
    print(f"stopped: {counts.drops} drops, {c['ok']} ok, {c['failed']} failed, {c['skipped']} skipped; "
          f"report: {watcher.report.path}", flush=True)
    return EXIT_OK


def _writable(folder: Path) -> bool:
    import os

    return os.access(folder, os.W_OK | os.X_OK)
