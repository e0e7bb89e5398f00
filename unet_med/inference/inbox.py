"""A watched inbox: scans dropped into a folder are segmented once they are complete.

Departments drop studies into a shared folder; :class:`InboxWatcher` segments each with one
loaded :class:`~unet_med.inference.segmenter.BatchSegmenter` and appends its rows to
``OUT/report.csv``, until told to stop.

What arrives is a **drop**: an entry at the top of the inbox, either a NIfTI (or PNG/TIFF) file or
a folder holding DICOM series and/or NIfTI files (a study or series folder, as DICOM receivers
write them). Names starting with ``.`` are not drops (rsync and many uploaders write under a hidden
temporary name, then rename). A drop is taken once **settled**: no file in it added, removed or
changed in size or modification time for ``settle_s`` seconds, as seen by this process's own
clock (so clock skew between a file server and this machine does not matter). A series that keeps
growing is therefore never started.

Why a polling loop rather than ``watchdog``/inotify: inboxes are often network shares (NFS, SMB),
where inotify sees no changes made by other machines; watchdog's fallback there is a polling
observer anyway, and its events would still need the same "quiet for N seconds" bookkeeping. One
``os.scandir`` walk per poll of what is waiting is cheap, and taken drops leave the inbox.

The life of a drop, each step one ``rename`` within the inbox (atomic on POSIX and NFS)::

    IN/<name> --claim--> IN/.work/<key>/<name'> --segment--> IN/.done/<name'>   (every scan ok/skipped)
                                                         --> IN/.failed/<name'> (a scan failed or none found)

Moving (rather than a marker file beside the input) keeps the inbox showing only what waits, keeps
each poll's walk short however long the watcher runs, and stops a late sender from adding to a drop
that is being segmented. ``<name'>`` is the drop's name made file-name safe and unique among the
drops already reported (a second ``case.nii.gz`` becomes ``case-2.nii.gz``; ``<key>`` is it without
the scan suffix, :func:`drop_key`), so its scan ids never collide with earlier results. Scan ids
are those ``unet-med infer`` would give for ``IN`` (paths relative to the drop's ``.work`` slot);
every report row's ``source`` starts with ``<name'>``.

Restart after a kill or a stop: drops left in ``.work`` are resumed first; a scan with a report
row is not touched again, a scan whose outputs are complete but has no row (killed between the two)
gets a ``skipped`` row with its volumes, anything else is segmented. Outputs are written atomically
(:mod:`unet_med.atomic_files`) and hidden temporaries left by a killed writer are removed at start.
"""

from __future__ import annotations

import fcntl
import os
import sys
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from unet_med.atomic_files import stale_temporaries
from unet_med.data.discovery import discover_scans, safe_scan_id
from unet_med.data.loading import IMAGE_SUFFIXES, NIFTI_SUFFIXES, is_nifti, is_plain_image
from unet_med.dicom.selection import SeriesSelection
from unet_med.inference.report import (
    REPORT_NAME,
    discovery_rows,
    error_text,
    read_report,
    report_columns,
    write_report,
)
from unet_med.inference.segmenter import BatchSegmenter

__all__ = [
    "DONE_DIR",
    "FAILED_DIR",
    "WORK_DIR",
    "InboxBusyError",
    "InboxReport",
    "InboxWatcher",
    "SettleTracker",
    "WatchCounts",
    "drop_key",
    "drop_signature",
]

WORK_DIR, DONE_DIR, FAILED_DIR = ".work", ".done", ".failed"
LOCK_NAME = ".unet-med-watch.lock"


class InboxBusyError(RuntimeError):
    """Another watcher holds the inbox or the output folder."""


# ------------------------------------------------------------------------------------ settling
def drop_signature(path: Path) -> Hashable | None:
    """What must stay unchanged for a drop to count as settled: (name, size, mtime in ns) of the file,
    or of every file and folder below the folder (hidden ones included: uploaders write there
    first). None when there is nothing yet (an empty folder) or the drop changed while being
    walked (a file vanished): neither is settled."""
    try:
        if not path.is_dir():
            st = path.stat()
            return (st.st_size, st.st_mtime_ns)
        entries, has_files = [], False
        for dirpath, dirnames, filenames in os.walk(path, onerror=_raise):
            has_files |= bool(filenames)
            for name in filenames + dirnames:
                full = os.path.join(dirpath, name)
                st = os.stat(full)
                entries.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    except OSError:
        return None
    return tuple(sorted(entries)) if has_files else None


def _raise(exc: OSError) -> None:
    raise exc


class SettleTracker:
    """Which drops have been quiet for ``settle_s`` seconds.

    Feed :meth:`observe` the signatures of the drops waiting now ({name: signature}, from
    :func:`drop_signature`) once per poll; it returns the names whose signature has not changed for
    ``settle_s`` seconds, oldest change first. A drop seen for the first time counts as changed now,
    so after a (re)start everything waits one settle time. A None signature never settles.

    Args:
        settle_s: quiet time in seconds.
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(self, settle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if settle_s < 0:
            raise ValueError(f"settle time must be >= 0 seconds, got {settle_s}")
        self.settle_s = settle_s
        self.clock = clock
        self._seen: dict[str, tuple[Hashable | None, float]] = {}

    def observe(self, signatures: Mapping[str, Hashable | None]) -> list[str]:
        now = self.clock()
        seen = {}
        for name, sig in signatures.items():
            old = self._seen.get(name)
            changed = old is None or old[0] != sig or sig is None
            seen[name] = (sig, now if changed else old[1])
        self._seen = seen  # drops that went away are forgotten
        settled = [(t, n) for n, (sig, t) in seen.items() if sig is not None and now - t >= self.settle_s]
        return [n for _, n in sorted(settled)]

    def forget(self, name: str) -> None:
        """Stop tracking ``name`` (it was taken)."""
        self._seen.pop(name, None)


# ------------------------------------------------------------------------------------ names
def _scan_suffix(name: str) -> str:
    """The scan-file suffix of ``name`` (``.nii.gz``, ``.png`` ...), or "" (folders, other files)."""
    lower = name.lower()
    for suffix in sorted(NIFTI_SUFFIXES + IMAGE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return name[-len(suffix) :]
    return ""


def drop_key(name: str) -> str:
    """A drop's name without its scan suffix, reduced to file-name-safe characters: what its scan
    ids start with (``"CT 1.nii.gz"`` -> ``"CT_1"``)."""
    suffix = _scan_suffix(name)
    return safe_scan_id(name[: len(name) - len(suffix)] if suffix else name)


def _unique_name(name: str, taken: set[str]) -> str:
    """``name`` made safe, with ``-2``, ``-3`` ... before its suffix until its key is not ``taken``."""
    suffix, key = _scan_suffix(name), drop_key(name)
    candidate, n = key, 1
    while candidate in taken:
        n += 1
        candidate = f"{key}-{n}"
    return candidate + suffix.lower()


# ------------------------------------------------------------------------------------ report
class InboxReport:
    """``OUT/report.csv`` of a watcher: rows added one at a time, the file rewritten atomically
    after each (:func:`~unet_med.inference.report.write_report`, so a reader or a kill never sees
    half a file); rows an earlier run wrote are kept.

    Raises:
        ValueError: the existing report has other columns (another bundle's labels).
    """

    def __init__(self, path: Path, labels: Mapping[int, str], *, statistics: bool = False) -> None:
        self.path, self.labels, self.statistics = path, labels, statistics
        self.rows: list[dict[str, Any]] = []
        if path.is_file():
            frame = read_report(path)
            expected = report_columns(labels, statistics=statistics)
            if list(frame.columns) != expected:
                raise ValueError(
                    f"{path}: columns {list(frame.columns)} differ from this bundle's {expected}; "
                    "use another --output folder"
                )
            self.rows = [
                {k: (None if _is_nan(v) else v) for k, v in r.items()} for r in frame.to_dict("records")
            ]

    @property
    def scan_ids(self) -> set[str]:
        return {str(r["scan_id"]) for r in self.rows}

    def drop_keys(self) -> set[str]:
        """The drop key of every reported row (the first part of its ``source``)."""
        return {drop_key(str(r["source"]).replace("\\", "/").split("/")[0]) for r in self.rows}

    def add(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        write_report(self.rows, self.path, self.labels, statistics=self.statistics)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


# ------------------------------------------------------------------------------------ watcher
@dataclass
class WatchCounts:
    """Rows this watcher added, per status, and drops it finished."""

    statuses: dict[str, int] = field(default_factory=lambda: {"ok": 0, "failed": 0, "skipped": 0})
    drops: int = 0


class InboxWatcher:
    """Segments what settles in ``inbox`` into ``out_dir`` until ``stop`` is set.

    Args:
        segmenter: the loaded bundle (one model for the watcher's whole life).
        inbox: the watched folder (must be writable: drops move to ``.work``, ``.done``, ``.failed``).
        out_dir: outputs and ``report.csv`` (created).
        settle_s: seconds a drop must stay unchanged before it is taken.
        poll_s: seconds between two looks at the inbox.
        stop: set it (from a signal handler or another thread) to stop; checked between scans and
            while idle, never inside one (a scan in progress is finished first).
        log: where one line per event goes (stdout by default); only scan ids and drop keys are
            printed, never DICOM tags.
        selection: series selection rules (``--select`` or the bundle's defaults): a scan that
            fails them gets a ``skipped`` row saying which rule, as with ``unet-med infer``.

    Raises:
        InboxBusyError: another watcher holds ``inbox`` or ``out_dir``.
        ValueError: ``out_dir/report.csv`` has another bundle's columns.
    """

    def __init__(
        self,
        segmenter: BatchSegmenter,
        inbox: str | Path,
        out_dir: str | Path,
        *,
        settle_s: float = 5.0,
        poll_s: float = 1.0,
        stop: threading.Event | None = None,
        log: TextIO | None = None,
        selection: SeriesSelection | None = None,
    ) -> None:
        self.segmenter = segmenter
        self.selection = selection
        self.inbox, self.out_dir = Path(inbox), Path(out_dir)
        self.work, self.done, self.failed = (self.inbox / d for d in (WORK_DIR, DONE_DIR, FAILED_DIR))
        self.tracker = SettleTracker(settle_s)
        self.poll_s = poll_s
        self.stop = stop or threading.Event()
        self.log = log
        self.counts = WatchCounts()
        for folder in (self.out_dir, self.work, self.done, self.failed):
            folder.mkdir(parents=True, exist_ok=True)
        self._locks = [self._lock(self.inbox), self._lock(self.out_dir)]
        self.report = InboxReport(
            self.out_dir / REPORT_NAME, segmenter.bundle.labels, statistics=segmenter.statistics
        )
        for tmp in stale_temporaries(self.out_dir):  # a killed run's; never taken for outputs
            tmp.unlink(missing_ok=True)
            self._say(f"removed {tmp.name} (a temporary file of a killed writer)")

    @staticmethod
    def _lock(folder: Path) -> TextIO:
        handle = open(folder / LOCK_NAME, "a")  # noqa: SIM115 (held for the watcher's life)
        try:  # released by the kernel when the process dies, SIGKILL included
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise InboxBusyError(f"another unet-med watch is using {folder} (it holds {LOCK_NAME})") from None
        return handle

    def close(self) -> None:
        """Release the locks (the watcher cannot be used afterwards)."""
        for handle in self._locks:
            handle.close()
        self._locks = []

    def _say(self, text: str) -> None:
        stream = self.log or sys.stdout
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}", file=stream, flush=True)

    # -------------------------------------------------------------------------------- loop
    def run(self) -> WatchCounts:
        """Resume drops left in ``.work``, then poll the inbox until ``stop`` is set."""
        try:
            self.resume()
            while not self.stop.is_set():
                self.poll_once()
                self.stop.wait(self.poll_s)
        finally:
            self.close()
        return self.counts

    def resume(self) -> None:
        """Finish the drops a killed or stopped watcher left in ``.work`` (nothing complete is redone)."""
        for slot in sorted(p for p in self.work.iterdir() if p.is_dir()):
            if self.stop.is_set():
                return
            entries = list(slot.iterdir())
            if not entries:  # killed between making the slot and moving the drop in, or after moving it out
                slot.rmdir()
                continue
            self._say(f"resuming {slot.name}")
            self._process(slot, entries[0], fresh=False)

    def poll_once(self) -> int:
        """Look at the inbox once and segment every drop that has settled; returns how many."""
        waiting = {
            e.name: drop_signature(Path(e.path)) for e in os.scandir(self.inbox) if not e.name.startswith(".")
        }
        taken = 0
        for name in self.tracker.observe(waiting):
            if self.stop.is_set():
                break
            self.tracker.forget(name)
            claimed = self._claim(name)
            if claimed is not None:
                self._process(*claimed, fresh=True)
                taken += 1
        return taken

    def _claim(self, name: str) -> tuple[Path, Path] | None:
        """Move ``IN/name`` into its own slot ``IN/.work/<key>/<name'>``; None if it went away."""
        taken = self.report.drop_keys() | {
            drop_key(p.name) for d in (self.work, self.done, self.failed) for p in d.iterdir()
        }
        new_name = _unique_name(name, taken)
        slot = self.work / drop_key(new_name)
        slot.mkdir()
        try:
            os.rename(self.inbox / name, slot / new_name)
        except FileNotFoundError:
            slot.rmdir()
            return None
        suffix = f" as {new_name}" if new_name != name else ""
        self._say(f"taking {drop_key(new_name)}{suffix}")
        return slot, slot / new_name

    # -------------------------------------------------------------------------------- one drop
    def _process(self, slot: Path, drop: Path, *, fresh: bool) -> None:
        """Segment every scan of ``drop`` (in its ``slot``), add the rows the report lacks, then move
        it to ``.done`` or ``.failed``; with ``stop`` set between scans it stays in ``.work``.

        ``fresh``: taken just now, so outputs already in OUT_DIR under its ids belong to something
        else (e.g. an earlier ``unet-med infer``) and are overwritten; a resumed drop keeps them."""
        failed = False
        rows = self._loose_file_rows(drop) if drop.is_file() and not _is_scan_file(drop.name) else None
        scans = []
        if rows is None:
            try:
                discovery = discover_scans(slot, self.selection)
                rows, scans = discovery_rows(discovery.skipped), discovery.scans
            except OSError as exc:  # e.g. a file without read permission: the drop fails, the watcher goes on
                rows = [self._drop_row(drop, "failed", f"cannot be read: {error_text(exc)}")]
        if not rows and not scans:
            rows = [self._drop_row(drop, "failed", "no NIfTI file or DICOM series found in it")]
        reported = self.report.scan_ids
        for row in rows:
            failed |= row["status"] == "failed"
            if row["scan_id"] not in reported:
                self._add(row)
        self.segmenter.overwrite = fresh
        for scan in scans:
            if scan.scan_id in reported:
                failed |= self._reported_status(scan.scan_id) == "failed"
                continue
            if self.stop.is_set():
                self._say(f"stopping: {drop.name} stays in {WORK_DIR} and is resumed at the next start")
                return
            row = self.segmenter.segment_scan(scan, self.out_dir)
            failed |= row["status"] == "failed"
            self._add(row)
        target = self.failed if failed else self.done
        final = target / _unique_name(drop.name, {drop_key(p.name) for p in target.iterdir()})
        os.rename(drop, final)
        slot.rmdir()
        self.counts.drops += 1
        self._say(f"{drop_key(drop.name)} -> {target.name}/{final.name}")

    def _reported_status(self, scan_id: str) -> str:
        return next(str(r["status"]) for r in self.report.rows if r["scan_id"] == scan_id)

    def _add(self, row: Mapping[str, Any]) -> None:
        self.report.add(row)
        status = str(row["status"])
        self.counts.statuses[status] = self.counts.statuses.get(status, 0) + 1
        detail = f": {row['error']}" if row.get("error") else ""
        self._say(f"{status} {row['scan_id']} ({float(row.get('seconds') or 0):.1f} s){detail}")

    def _drop_row(self, drop: Path, status: str, error: str) -> dict[str, Any]:
        return {"scan_id": drop_key(drop.name), "source": drop.name, "status": status, "error": error,
                "seconds": 0.0}  # fmt: skip

    def _loose_file_rows(self, drop: Path) -> list[dict[str, Any]]:
        return [
            self._drop_row(
                drop, "failed", f"{drop.name}: a loose file that is not a NIfTI or image file; DICOM series "
                "are taken as folders (one folder per study or series)",
            )
        ]


def _is_scan_file(name: str) -> bool:
    return is_nifti(name) or is_plain_image(name)
