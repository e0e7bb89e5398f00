"""Atomic file output: write to a hidden temporary name in the target's folder, then rename over it.

A crash, a kill, a full disk or an exception in the writer leaves either the previous file or the
new one, never a half-written file (a rename within one folder is atomic on POSIX file systems).
Written here because neither the standard library nor the project's dependencies offer a
writer-agnostic version: ``tempfile`` creates files with mode 0600 and MONAI's ``CheckpointSaver``
covers only ``torch.save``; this one works for any writer that takes a path (nibabel, pandas,
matplotlib, pydicom, highdicom, ``torch.save``).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_output", "save_png", "stale_temporaries"]

# Compression suffixes that only make sense together with the suffix before them (.nii.gz, .csv.gz).
_COMPRESSION_SUFFIXES = {".gz", ".bz2", ".xz", ".zst", ".zip"}


def _temporary_name(path: str | os.PathLike, suffix: str | None = None) -> Path:
    """The hidden temporary name used for ``path``: ``.<name>.<pid>.<random>.tmp<suffix>`` in its folder.

    ``suffix`` defaults to the file's format suffix (the last one, or the last two when the last is
    a compression suffix: ``.nii.gz``) so writers that pick the format from the name keep working;
    pass ``""`` for a name ending in ``.tmp``. The random part keeps concurrent writers (threads,
    processes) of the same file apart.
    """
    path = Path(path)
    if suffix is None:
        suffixes = path.suffixes
        keep = 2 if len(suffixes) >= 2 and suffixes[-1].lower() in _COMPRESSION_SUFFIXES else 1
        suffix = "".join(suffixes[-keep:])
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{suffix}")


def _fsync_path(path: Path) -> None:
    """Flush a written file to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    try:  # make the rename itself durable; not every file system lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


@contextmanager
def atomic_output(
    path: str | os.PathLike, *, suffix: str | None = None, fsync: bool = False
) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on a clean exit rename it over ``path``.

    Creates ``path``'s parent folder. The block must write the file at the yielded path. When the
    block raises (``KeyboardInterrupt`` included), or the rename fails, the temporary file is removed
    and ``path`` keeps its previous content (or stays absent). With ``fsync=True`` the file is
    flushed to disk before the rename and the folder after it, so the new content survives a power
    loss. ``suffix`` is the temporary name's ending (see :func:`_temporary_name`).

    Example::

        with atomic_output(out_dir / "case.nii.gz") as tmp:
            nib.save(image, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path, suffix)
    try:
        yield tmp
        if fsync:
            _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_folder(path.parent)


def save_png(figure: Any, path: str | os.PathLike, **savefig_kwargs: Any) -> Path:
    """Write a matplotlib figure to ``path`` as PNG (whatever the name's suffix) atomically, then
    close it so long trainings do not accumulate open figures."""
    import matplotlib.pyplot as plt

    path = Path(path)
    with atomic_output(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", **savefig_kwargs)
    plt.close(figure)
    return path


_TEMPORARY_NAME = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp")


def stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """The temporary files of :func:`atomic_output` in ``folder`` whose writing process is gone (a
    writer killed mid-write, e.g. by SIGKILL, which no ``except`` can clean up), sorted by name.
    Files of a live process, this one included, are left out: they may still be renamed into place."""
    found = []
    for path in Path(folder).iterdir():
        match = _TEMPORARY_NAME.match(path.name)
        if match and path.is_file() and not _process_alive(int(match.group(1))):
            found.append(path)
    return sorted(found)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
