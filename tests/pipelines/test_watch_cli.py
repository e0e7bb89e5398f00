"""``unet-med watch`` end to end: SIGTERM stops between scans and a restart finishes the drop; a
watcher killed with SIGKILL mid-drop restarts without re-doing anything complete and leaves no
half-written output; infer's output options (--dicom-seg) pass through; --help and usage errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest

from pipelines.cli import main
from unet_med.inference.outputs import output_stem

REPO = Path(__file__).resolve().parents[2]


def _wait_for(condition: Callable[[], bool], timeout: float = 120.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _rows(out: Path) -> pd.DataFrame:
    path = out / "report.csv"
    if not path.is_file():
        return pd.DataFrame(columns=["scan_id", "status"])
    return pd.read_csv(path, dtype={"error": str}).fillna({"error": ""})


def _batch_drop(infer_scans: Path, inbox: Path, n: int) -> list[str]:
    """A folder drop ``inbox/batch`` of ``n`` NIfTI scans; returns their scan ids."""
    folder = inbox / "batch"
    folder.mkdir(parents=True)
    sources = [infer_scans / "ct_a.nii.gz", infer_scans / "sub" / "ct_b.nii.gz"]
    for k in range(n):
        shutil.copyfile(sources[k % 2], folder / f"case{k}.nii.gz")
    return [f"batch_case{k}" for k in range(n)]


def _segmentations(out: Path) -> dict[str, int]:
    """{file name: mtime in ns} of the label maps in ``out``, each checked to load completely."""
    found = {}
    for p in sorted(out.glob("*_seg.nii.gz")):
        assert nib.load(p).get_fdata().size > 0  # complete, not half written
        found[p.name] = p.stat().st_mtime_ns
    return found


def _watch_args(bundle: Path, inbox: Path, out: Path) -> list[str]:
    return ["watch", "--bundle", str(bundle), "--inbox", str(inbox), "--output", str(out), "--settle", "0.3",
            "--poll", "0.05", "--no-qc"]  # fmt: skip


def _signal_when(condition: Callable[[], bool], signum: int) -> threading.Thread:
    """Send ``signum`` to this process once ``condition`` holds (from a helper thread)."""

    def wait_and_signal() -> None:
        _wait_for(condition, what="the condition to signal on")
        os.kill(os.getpid(), signum)

    thread = threading.Thread(target=wait_and_signal, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_sigterm_stops_between_scans_and_a_restart_finishes_the_drop(
    infer_bundle, infer_scans, tmp_path, capsys
):
    inbox, out = tmp_path / "in", tmp_path / "out"
    ids = _batch_drop(infer_scans, inbox, 3)
    handler_before = signal.getsignal(signal.SIGTERM)
    _signal_when(lambda: len(_rows(out)) >= 1, signal.SIGTERM)
    assert main(_watch_args(infer_bundle, inbox, out)) == 0
    text = capsys.readouterr().out
    assert "SIGTERM: stopping after the scan in progress" in text and "stopped:" in text
    first = _rows(out)
    done_first = _segmentations(out)
    # every scan begun was finished and reported; none started after the signal was noticed
    assert 1 <= len(first) <= 2 and set(first["status"]) == {"ok"}
    assert sorted(done_first) == sorted(f"{output_stem(i)}_seg.nii.gz" for i in first["scan_id"])
    assert (inbox / ".work" / "batch" / "batch").is_dir() and not (inbox / ".done" / "batch").exists()
    assert signal.getsignal(signal.SIGTERM) == handler_before  # the command's handler is gone again

    _signal_when(lambda: (inbox / ".done" / "batch").is_dir(), signal.SIGTERM)
    assert main(_watch_args(infer_bundle, inbox, out)) == 0
    assert "resuming batch" in capsys.readouterr().out
    report = _rows(out)
    assert sorted(report["scan_id"]) == ids and set(report["status"]) == {"ok"}  # one row each
    after = _segmentations(out)
    assert all(after[name] == stamp for name, stamp in done_first.items())  # not segmented again


@pytest.mark.slow
def test_sigkill_mid_drop_then_restart_redoes_nothing_complete(infer_bundle, infer_scans, tmp_path, capsys):
    inbox, out = tmp_path / "in", tmp_path / "out"
    ids = _batch_drop(infer_scans, inbox, 4)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    command = [sys.executable, "-m", "pipelines.cli", *_watch_args(infer_bundle, inbox, out)]

    log = tmp_path / "first.log"
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: len(_rows(out)) >= 1 or first.poll() is not None, what="the first scan")
        first.send_signal(signal.SIGKILL)  # mid-drop: no handler runs, no cleanup
    finally:
        first.wait(30)
    assert first.returncode == -signal.SIGKILL, log.read_text()
    before = _rows(out)
    done_before = _segmentations(out)
    assert len(before) >= 1 and len(done_before) >= len(before)
    assert (inbox / ".work" / "batch" / "batch").is_dir()  # killed with scans of the drop to do
    # what a kill inside atomic_output leaves (made sure of here: the kill may have hit between writes)
    half = out / f".batch_case3_seg.nii.gz.{first.pid}.0123abcd.tmp.nii.gz"
    half.write_bytes((infer_scans / "ct_a.nii.gz").read_bytes()[:100])

    # the restart (in this process: the model loads in a fraction of the subprocess's time)
    _signal_when(lambda: (inbox / ".done" / "batch").is_dir(), signal.SIGTERM)
    assert main(_watch_args(infer_bundle, inbox, out)) == 0
    text = capsys.readouterr().out
    assert "resuming batch" in text and "stopped:" in text
    assert f"removed {half.name}" in text
    report = _rows(out)
    assert sorted(report["scan_id"]) == ids  # one row per scan, the first run's kept
    assert set(report["status"]) <= {"ok", "skipped"}  # skipped: outputs finished, row lost to the kill
    pd.testing.assert_frame_equal(report.set_index("scan_id").loc[before["scan_id"]].reset_index(), before)
    after = _segmentations(out)
    assert len(after) == 4
    assert all(after[name] == stamp for name, stamp in done_before.items())  # nothing complete redone
    assert not [p.name for p in out.iterdir() if ".tmp" in p.name]  # no temporaries of the killed run
    assert not list((inbox / ".work").iterdir())


def test_help_documents_drops_stopping_and_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["watch", "--help"])
    text = capsys.readouterr().out
    for part in ("--settle", "--dicom-seg", "--checkpoint", "INBOX/.done", "SIGTERM", "exit codes"):
        assert part in text


def test_usage_errors_exit_2(infer_bundle, tmp_path, capsys):
    inbox = tmp_path / "in"
    assert main(_watch_args(infer_bundle, inbox, tmp_path / "out")) == 2
    assert "inbox folder not found" in capsys.readouterr().err
    inbox.mkdir()
    assert main(_watch_args(infer_bundle, inbox, inbox / "out")) == 2
    assert "must not be inside the inbox" in capsys.readouterr().err
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "report.csv").write_text("scan_id,source,status,error,seconds,voxels_liver\n")
    assert main(_watch_args(infer_bundle, inbox, tmp_path / "other")) == 2
    assert "differ from this bundle's" in capsys.readouterr().err


@pytest.mark.slow
def test_output_options_are_infers_dicom_seg_for_a_dicom_drop(infer_bundle, infer_scans, tmp_path):
    import pydicom

    inbox, out = tmp_path / "in", tmp_path / "out"
    shutil.copytree(infer_scans / "series1", inbox / "study")
    _signal_when(lambda: (inbox / ".done" / "study").is_dir(), signal.SIGTERM)
    assert main([*_watch_args(infer_bundle, inbox, out), "--dicom-seg"]) == 0
    (row,) = _rows(out).itertuples()
    assert row.status == "ok"
    seg = pydicom.dcmread(out / f"{output_stem(row.scan_id)}_seg.dcm")
    source = pydicom.dcmread(next((inbox / ".done" / "study").iterdir()), stop_before_pixels=True)
    assert seg.Modality == "SEG"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
