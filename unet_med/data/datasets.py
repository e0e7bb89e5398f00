"""Dataset construction with the caching the config asks for.

MONAI's ``CacheDataset`` (RAM) and ``PersistentDataset`` (disk) both run a chain up to its first
random transform once and cache that result; the random transforms (patch sampling,
augmentation) run fresh every epoch. So the deterministic prefix (loading, orientation,
resampling, intensity normalisation, weight map) is computed once per scan.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["CACHE_MODES", "make_dataset"]

CACHE_MODES = ("memory", "disk", "none")


def make_dataset(
    datalist: Sequence[dict[str, Any]],
    transform: Callable | None,
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    *,
    cache_key: Any = None,
    cache_rate: float = 1.0,
    num_workers: int | None = 0,
    progress: bool = False,
) -> Any:
    """A MONAI dataset over ``datalist`` with ``transform``.

    Args:
        datalist: dicts as :func:`~unet_med.data.manifest.manifest_datalist` returns.
        transform: the MONAI chain (usually a ``Compose``).
        cache: ``"memory"`` -> ``CacheDataset`` (deterministic prefix kept in RAM),
            ``"disk"`` -> ``PersistentDataset`` (prefix cached as files under
            ``cache_dir/<hash of cache_key>``, reused across runs with the same settings),
            ``"none"`` -> plain ``Dataset``.
        cache_dir: folder for ``"disk"`` (required there).
        cache_key: the settings the deterministic prefix depends on (normalisation, spacing,
            weight-map parameters, ...; JSON-serialisable). MONAI's ``PersistentDataset`` keys its
            files by the data item only (its transform hashing falls back to class names), so a
            run with other preprocessing settings would read stale files; each distinct
            ``cache_key`` gets its own sub-folder instead.
        cache_rate: fraction of items ``"memory"`` keeps cached.
        num_workers: threads that fill the memory cache (0: in the calling thread).

    Raises:
        ValueError: unknown cache mode, or ``"disk"`` without ``cache_dir``.
    """
    from monai.data import CacheDataset, Dataset, PersistentDataset

    data = list(datalist)
    if cache == "memory":
        return CacheDataset(
            data, transform, cache_rate=cache_rate, num_workers=num_workers, progress=progress
        )
    if cache == "disk":
        if cache_dir is None:
            raise ValueError("cache='disk' needs a cache_dir for the on-disk cache")
        folder = Path(cache_dir)
        if cache_key is not None:
            text = json.dumps(cache_key, sort_keys=True, default=str)
            folder = folder / hashlib.sha256(text.encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        return PersistentDataset(data, transform, cache_dir=folder)
    if cache == "none":
        return Dataset(data, transform)
    raise ValueError(f"cache must be one of {CACHE_MODES}, got {cache!r}")
