"""Dataset and data-loader construction with the caching and prefetching the config asks for.

MONAI's ``CacheDataset`` (RAM) and ``PersistentDataset`` (disk) both run a chain up to its first
random transform once and cache that result; the random transforms (patch sampling,
augmentation) run fresh every epoch. So the deterministic prefix (loading, orientation,
resampling, intensity normalisation, weight map) is computed once per scan.

:func:`make_dataloader` runs the random rest in a background thread while the network trains on
the previous batch (``prefetch_batches`` > 0, what plans choose), so the step does not wait for it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from monai.data import DataLoader, ThreadDataLoader
from monai.data.thread_buffer import buffer_iterator

__all__ = ["CACHE_MODES", "PrefetchingDataLoader", "make_dataloader", "make_dataset", "with_transform"]

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


def with_transform(dataset: Any, transform: Callable) -> Any:
    """``dataset`` with another chain whose deterministic prefix is the same: a shallow copy
    sharing the items and, for ``CacheDataset``/``PersistentDataset``, the cache, so a second
    random tail (other patch sampling) costs no second load or preprocessing of the scans.

    The caller guarantees the prefix: MONAI's caches hold the output of the transforms before the
    first random one, and the copy applies ``transform`` from its own first random transform on.
    """
    copied = copy.copy(dataset)
    copied.transform = transform
    return copied


class PrefetchingDataLoader(ThreadDataLoader):
    """MONAI's ``ThreadDataLoader``: a background thread prepares the next ``buffer_size``
    batches while the caller works on the current one; with ``num_workers=0`` the same transform
    objects run in the same order as in a plain ``DataLoader``, so the batches are the same, bit
    for bit.

    Written here because MONAI's thread drops an exception raised while preparing a batch (the
    iteration just ends early, so a training would go on with short or empty epochs); this one
    raises it in the consuming thread, as a plain ``DataLoader`` would.
    """

    def __iter__(self) -> Iterator[Any]:
        # the loader's iterator is made here, in the caller's thread, as ThreadDataLoader does
        # (it draws its base seed from torch's global generator)
        batches = DataLoader.__iter__(self)
        failure: list[BaseException] = []

        def source() -> Iterator[Any]:
            try:
                yield from batches
            except Exception as exc:  # handed over to the consuming thread below
                failure.append(exc)

        yield from buffer_iterator(source(), self.buffer_size, self.buffer_timeout, self.repeats)
        if failure:
            raise failure[0]


def make_dataloader(
    dataset: Any,
    *,
    batch_size: int = 1,
    shuffle: bool = False,
    sampler: Any = None,
    num_workers: int = 0,
    prefetch_batches: int = 0,
    **kwargs: Any,
) -> DataLoader:
    """A MONAI ``DataLoader`` over ``dataset``, or a :class:`PrefetchingDataLoader` when
    ``prefetch_batches`` > 0: a background thread then prepares that many batches ahead while
    the training step runs (the same batches in the same order as without it).

    Args:
        dataset, batch_size, shuffle, sampler, num_workers, kwargs: as ``DataLoader``.
        prefetch_batches: batches prepared ahead in a background thread (0: none, the step
            waits for each batch to be made).

    Raises:
        ValueError: a negative ``prefetch_batches``.
    """
    if int(prefetch_batches) < 0:
        raise ValueError(f"prefetch_batches must be >= 0 (0: no background thread), got {prefetch_batches!r}")
    args = dict(batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=num_workers, **kwargs)
    if int(prefetch_batches) == 0:
        return DataLoader(dataset, **args)
    return PrefetchingDataLoader(dataset, buffer_size=int(prefetch_batches), **args)
