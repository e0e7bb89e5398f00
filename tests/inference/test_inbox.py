"""The watched inbox: a drop is taken only once it has settled (a series copied in slice by slice is
not started early), every scan gets one report row, bad scans are reported and moved to .failed
while the next good one is done, and a repeated name never reuses earlier results."""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest

from unet_med.data.writing import save_nifti
from unet_med.inference import BatchSegmenter
from unet_med.inference.inbox import InboxWatcher, SettleTracker, drop_key, drop_signature
from unet_med.inference.outputs import output_stem


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_drop_settles_only_after_staying_unchanged_for_the_settle_time():
    clock = FakeClock()
    tracker = SettleTracker(2.0, clock=clock)
    assert tracker.observe({"a": (1,)}) == []  # first seen: changed now
    clock.now += 1.9
    assert tracker.observe({"a": (1,)}) == []
    clock.now += 0.5
    assert tracker.observe({"a": (1, 2)}) == []  # grew: the clock starts again
    clock.now += 1.9
    assert tracker.observe({"a": (1, 2), "b": None}) == []
    clock.now += 0.2
    assert tracker.observe({"a": (1, 2), "b": None}) == ["a"]
    clock.now += 10
    assert tracker.observe({"b": None}) == []  # nothing yet (empty folder) never settles


def test_signature_sees_added_grown_and_hidden_files(tmp_path):
    drop = tmp_path / "study"
    drop.mkdir()
    assert drop_signature(drop) is None  # an empty folder is not a drop yet
    (drop / "s1.dcm").write_bytes(b"1")
    first = drop_signature(drop)
    (drop / "s1.dcm").write_bytes(b"12")
    second = drop_signature(drop)
    (drop / "sub").mkdir()
    (drop / "sub" / ".s2.dcm.part").write_bytes(b"1")  # an uploader's hidden temporary file
    third = drop_signature(drop)
    assert len({first, second, third}) == 3
    assert drop_signature(drop) == third
    assert drop_signature(tmp_path / "gone") is None


def test_drop_keys_are_file_name_safe_scan_id_prefixes():
    assert drop_key("CT 1.nii.gz") == "CT_1"
    assert drop_key("study 42") == "study_42"
    assert drop_key("a.NII") == "a"


# ------------------------------------------------------------------------------- with a model
def _wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _rows(out: Path) -> pd.DataFrame:
    path = out / "report.csv"
    return pd.read_csv(path, dtype={"error": str}).fillna({"error": ""}) if path.is_file() else pd.DataFrame()


class RunningWatcher:
    """An :class:`InboxWatcher` polling in a background thread (settle and poll in seconds)."""

    def __init__(
        self, bundle: Path, inbox: Path, out: Path, settle: float, poll: float = 0.05, **options: object
    ) -> None:
        selection = options.pop("selection", None)
        segmenter = BatchSegmenter.from_bundle(bundle, qc=False, **options)
        self.log = io.StringIO()
        self.watcher = InboxWatcher(
            segmenter, inbox, out, settle_s=settle, poll_s=poll, log=self.log, selection=selection
        )
        self.thread = threading.Thread(target=self.watcher.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.watcher.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()


@pytest.fixture
def watched(infer_bundle, tmp_path):
    """``start(settle)``: a watcher of ``tmp_path/in`` into ``tmp_path/out``; stopped at the end."""
    started = []

    def start(settle: float, **options: object) -> RunningWatcher:
        started.append(RunningWatcher(infer_bundle, tmp_path / "in", tmp_path / "out", settle, **options))
        return started[-1]

    (tmp_path / "in").mkdir()
    yield start
    for w in started:
        w.stop()


@pytest.mark.slow
def test_series_copied_slice_by_slice_is_taken_only_after_it_settles(infer_scans, watched, tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    slices = sorted((infer_scans / "series1").iterdir())
    settle = 1.0
    running = watched(settle)
    target = inbox / "study1"
    target.mkdir()
    for n, path in enumerate(slices, start=1):
        shutil.copyfile(path, target / path.name)
        time.sleep(settle / 4)  # a sender's pause, shorter than the settle time
        # still growing: not taken (the folder would have moved to .work) and nothing reported
        assert len(list(target.iterdir())) == n
        assert not (out / "report.csv").exists()
    _wait_for(lambda: (inbox / ".done" / "study1").is_dir(), what="the series to be done")
    running.stop()
    report = _rows(out)
    assert len(report) == 1
    row = report.iloc[0]
    assert row["status"] == "ok" and row["source"] == "study1" and row["scan_id"].startswith("study1_")
    seg = nib.load(out / f"{output_stem(row['scan_id'])}_seg.nii.gz")
    assert seg.shape == (20, 16, len(slices))  # the whole series, not the slices there at first
    assert len(list((inbox / ".done" / "study1").iterdir())) == len(slices)
    assert not target.exists() and not list((inbox / ".work").iterdir())


@pytest.mark.slow
def test_bad_scan_is_reported_and_moved_to_failed_and_the_next_good_one_done(infer_scans, watched, tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "out"
    good = (infer_scans / "ct_a.nii.gz").read_bytes()
    (inbox / "broken.nii.gz").write_bytes(good[: len(good) // 2])
    (inbox / "ct_a.nii.gz").write_bytes(good)
    (inbox / "stray.dcm").write_bytes((infer_scans / "series1" / "slice_0000.dcm").read_bytes())
    running = watched(0.2)
    _wait_for(lambda: len(_rows(out)) == 3, what="three rows")
    # the same name again (another patient's scan): a new drop with its own id, not the old result
    save_nifti((nib.load(infer_scans / "sub" / "ct_b.nii.gz").get_fdata()).astype("int16"),
               nib.load(infer_scans / "sub" / "ct_b.nii.gz").affine, tmp_path / "ct_a.nii.gz")  # fmt: skip
    shutil.move(tmp_path / "ct_a.nii.gz", inbox / "ct_a.nii.gz")
    _wait_for(lambda: len(_rows(out)) == 4, what="the second ct_a")
    running.stop()
    report = _rows(out).set_index("scan_id")
    assert report.loc["broken", "status"] == "failed" and "truncated" in report.loc["broken", "error"]
    stray = report.loc["stray.dcm"]
    assert stray["status"] == "failed" and "DICOM series are taken as folders" in stray["error"]
    assert report.loc["ct_a", "status"] == "ok" and report.loc["ct_a-2", "status"] == "ok"
    assert report.loc["ct_a-2", "source"] == "ct_a-2.nii.gz"
    assert nib.load(out / "ct_a-2_seg.nii.gz").shape == (17, 20, 7)  # ct_b's shape, segmented anew
    assert nib.load(out / "ct_a_seg.nii.gz").shape == (22, 18, 9)
    assert sorted(p.name for p in (inbox / ".failed").iterdir()) == ["broken.nii.gz", "stray.dcm"]
    assert sorted(p.name for p in (inbox / ".done").iterdir()) == ["ct_a-2.nii.gz", "ct_a.nii.gz"]
    assert "failed broken" in running.log.getvalue()


def test_a_second_watcher_on_the_same_inbox_is_refused(infer_bundle, tmp_path):
    from unet_med.inference.inbox import InboxBusyError

    segmenter = BatchSegmenter.from_bundle(infer_bundle, qc=False)
    (tmp_path / "in").mkdir()
    first = InboxWatcher(segmenter, tmp_path / "in", tmp_path / "out", log=io.StringIO())
    with pytest.raises(InboxBusyError, match="another unet-med watch is using"):
        InboxWatcher(segmenter, tmp_path / "in", tmp_path / "out2", log=io.StringIO())
    first.close()
    InboxWatcher(segmenter, tmp_path / "in", tmp_path / "out2", log=io.StringIO()).close()


@pytest.mark.slow
def test_selection_rules_and_statistics_apply_to_what_the_inbox_receives(infer_scans, watched, tmp_path):
    from unet_med.dicom.selection import parse_rules

    inbox, out = tmp_path / "in", tmp_path / "out"
    shutil.copyfile(infer_scans / "ct_a.nii.gz", inbox / "ct_a.nii.gz")  # 9 slices
    shutil.copyfile(infer_scans / "sub" / "ct_b.nii.gz", inbox / "ct_b.nii.gz")  # 7 slices
    running = watched(0.2, selection=parse_rules(["slices>=8"]), statistics=True)
    _wait_for(lambda: len(_rows(out)) == 2, what="two rows")
    running.stop()
    report = _rows(out).set_index("scan_id")
    assert report.loc["ct_a", "status"] == "ok" and report.loc["ct_a", "selection"] == "selected"
    assert report.loc["ct_a", "components_organ"] >= 1  # --statistics columns in the inbox's report
    assert report.loc["ct_b", "status"] == "skipped"
    assert report.loc["ct_b", "selection"] == "not selected: slices>=8 (found 7)"
    assert not (out / "ct_b_seg.nii.gz").exists()
