"""Atomic file output: the target appears only on success, keeps its old content on failure,
leaves no temporary file behind, and the temporary name keeps the format suffix."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from unet_med.atomic_files import atomic_output


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("fsync", [False, True])
def test_file_appears_only_when_the_block_succeeds(tmp_path, fsync):
    path = tmp_path / "new" / "folder" / "table.csv"  # parent folders are created
    with atomic_output(path, fsync=fsync) as tmp:
        assert tmp.parent == path.parent
        assert tmp.name.startswith(".") and tmp != path
        tmp.write_text("a,b\n1,2\n")
        assert not path.exists()  # nothing at the target while the block runs
    assert path.read_text() == "a,b\n1,2\n"
    assert not tmp.exists()
    assert _leftovers(path.parent) == []


def test_success_replaces_previous_content(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    with atomic_output(path) as tmp:
        tmp.write_text("new")
        assert path.read_text() == "old"
    assert path.read_text() == "new"


@pytest.mark.parametrize("error", [RuntimeError("writer failed"), KeyboardInterrupt()])
def test_exception_keeps_old_content_and_removes_temporary_file(tmp_path, error):
    path = tmp_path / "model.pt"
    path.write_text("old checkpoint")
    with pytest.raises(type(error)), atomic_output(path, fsync=True) as tmp:
        tmp.write_text("half written")
        raise error
    assert path.read_text() == "old checkpoint"
    assert not tmp.exists()
    assert _leftovers(tmp_path) == []


def test_exception_without_previous_file_leaves_nothing(tmp_path):
    path = tmp_path / "case.nii.gz"
    with pytest.raises(ValueError, match="bad volume"), atomic_output(path) as tmp:
        tmp.write_bytes(b"partial")
        raise ValueError("bad volume")
    assert list(tmp_path.iterdir()) == []


def test_block_that_writes_nothing_fails_and_keeps_old_content(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("old")
    with pytest.raises(FileNotFoundError), atomic_output(path):
        pass
    assert path.read_text() == "old"


@pytest.mark.parametrize(
    ("name", "suffix", "ending"),
    [
        ("case_001.nii.gz", None, ".nii.gz"),
        ("sub.01.nii", None, ".nii"),
        ("overlay.png", None, ".png"),
        ("per_case_metrics.csv", None, ".csv"),
        ("table.csv.gz", None, ".csv.gz"),
        ("IM0001", None, ".tmp"),
        ("last.pt", "", ".tmp"),
        ("curve", ".png", ".png"),
    ],
)
def test_temporary_name_keeps_the_format_suffix(tmp_path, name, suffix, ending):
    with atomic_output(tmp_path / name, suffix=suffix) as tmp:
        assert tmp.name.endswith(ending)
        assert ".tmp" in tmp.name  # recognisable as a temporary file by name
        tmp.write_bytes(b"x")
    assert (tmp_path / name).read_bytes() == b"x"


def test_writer_that_infers_the_format_from_the_name_writes_that_format(tmp_path):
    nib = pytest.importorskip("nibabel")
    path = tmp_path / "label.nii.gz"
    image = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    with atomic_output(path) as tmp:
        nib.save(image, str(tmp))
    with gzip.open(path) as f:  # nibabel compressed it because the temporary name ends in .gz
        assert len(f.read()) > 0
    np.testing.assert_array_equal(np.asarray(nib.load(path).dataobj), np.arange(24).reshape(2, 3, 4))


def test_concurrent_writers_get_distinct_temporary_names(tmp_path):
    path = tmp_path / "shared.csv"
    with atomic_output(path) as first, atomic_output(path) as second:
        assert first != second
        first.write_text("1")
        second.write_text("2")
    assert path.read_text() == "1"  # the outer block renames last


def test_save_png_writes_a_png_whatever_the_name_and_closes_the_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unet_med.atomic_files import save_png

    fig = plt.figure()
    path = save_png(fig, tmp_path / "plots" / "curve.img")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in path.parent.iterdir()] == ["curve.img"]


def test_stale_temporaries_are_those_of_dead_writers_only(tmp_path):
    import subprocess
    import sys

    from unet_med.atomic_files import _temporary_name, stale_temporaries

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    target = tmp_path / "case_seg.nii.gz"
    mine = _temporary_name(target)
    killed = Path(str(_temporary_name(target)).replace(f".{os.getpid()}.", f".{dead_pid}."))
    for p in (mine, killed, tmp_path / ".hidden_note", target):
        p.write_bytes(b"x")
    assert stale_temporaries(tmp_path) == [killed]
