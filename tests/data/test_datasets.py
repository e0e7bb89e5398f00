"""Datasets cache the deterministic prefix of a transform chain, never the random steps; a loader
that prepares batches in a background thread gives the same batches and the same errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import DataLoader
from monai.transforms import Compose, MapTransform, RandGaussianNoised, RandSpatialCropd
from monai.utils import set_determinism

from unet_med.data import make_dataset
from unet_med.data.datasets import PrefetchingDataLoader, make_dataloader


class CountingLoad(MapTransform):
    """Deterministic step that counts how often it runs."""

    calls = 0

    def __call__(self, data):
        CountingLoad.calls += 1
        d = dict(data)
        d["image"] = np.arange(400, dtype=np.float32).reshape(1, 20, 20) + d["offset"]
        return d


@pytest.mark.parametrize("cache", ["memory", "disk", "none"])
def test_dataset_caches_the_deterministic_prefix_only(tmp_path, cache):
    CountingLoad.calls = 0
    chain = Compose(
        [CountingLoad(["image"]), RandSpatialCropd(["image"], roi_size=(4, 4), random_size=False)]
    )
    ds = make_dataset([{"offset": 0.0}, {"offset": 1000.0}], chain, cache=cache, cache_dir=tmp_path / "c")
    crops = [ds[0]["image"] for _ in range(6)]
    assert all(c.shape == (1, 4, 4) for c in crops)
    assert len({float(c[0, 0, 0]) for c in crops}) > 1  # random crop runs every time
    expected = {"memory": 2, "disk": 1, "none": 6}[cache]  # memory caches both items up front
    assert CountingLoad.calls == expected
    if cache == "disk":
        assert any((tmp_path / "c").iterdir())
    with pytest.raises(ValueError, match="cache must be one of"):
        make_dataset([], chain, cache="ram")


def test_disk_cache_is_not_shared_between_preprocessing_settings(tmp_path):
    CountingLoad.calls = 0
    chain = Compose(
        [CountingLoad(["image"]), RandSpatialCropd(["image"], roi_size=(4, 4), random_size=False)]
    )
    item = [{"offset": 0.0}]
    for key in ({"normalization": "ct_dataset"}, {"normalization": "zscore_foreground"}):
        make_dataset(item, chain, cache="disk", cache_dir=tmp_path / "c", cache_key=key)[0]
    assert CountingLoad.calls == 2  # another setting does not read the first one's files
    same = {"normalization": "ct_dataset"}
    make_dataset(item, chain, cache="disk", cache_dir=tmp_path / "c", cache_key=same)[0]
    assert CountingLoad.calls == 2  # the same setting reuses them
    assert len(list((tmp_path / "c").iterdir())) == 2


def _random_patch_chain() -> Compose:
    return Compose(
        [
            RandSpatialCropd(["image"], roi_size=(6, 6), random_size=False),
            RandGaussianNoised(["image"], prob=0.5),
        ]
    )


def _batches(prefetch_batches: int, passes: int = 3) -> list:
    set_determinism(seed=0)  # what a training's initialisation does
    items = [{"image": np.random.default_rng(i).random((1, 20, 20), dtype=np.float32)} for i in range(5)]
    loader = make_dataloader(
        make_dataset(items, _random_patch_chain(), cache="memory"),
        batch_size=2,
        shuffle=True,
        prefetch_batches=prefetch_batches,
    )
    batches = [type(loader)] + [batch["image"].clone() for _ in range(passes) for batch in loader]
    set_determinism(seed=None)
    return batches


def test_prefetching_in_a_thread_gives_the_plain_loaders_batches_bit_for_bit():
    plain, prefetched = _batches(0), _batches(1)
    assert plain[0] is DataLoader and prefetched[0] is PrefetchingDataLoader
    assert len(plain) == len(prefetched) == 1 + 3 * 3  # 5 items in batches of 2, three passes
    # same shuffling, same random crops and noise, same order: training sees the same data
    assert all(torch.equal(a, b) for a, b in zip(plain[1:], prefetched[1:]))
    assert not torch.equal(plain[1], plain[4])  # the passes differ (the check can fail)
    with pytest.raises(ValueError, match="prefetch_batches must be >= 0"):
        make_dataloader([], prefetch_batches=-1)


class BrokenAugmentation(MapTransform):
    """A random step that fails on one scan, as a bad scan would."""

    def __call__(self, data):
        if data["name"] == "scan_3":
            raise RuntimeError("scan_3: label has no foreground")
        return data


def test_an_error_while_prefetching_is_raised_in_the_training_thread():
    items = [{"image": np.zeros((1, 8, 8), np.float32), "name": f"scan_{i}"} for i in range(5)]
    chain = Compose(
        [RandSpatialCropd(["image"], roi_size=(4, 4), random_size=False), BrokenAugmentation(["image"])]
    )
    loader = make_dataloader(make_dataset(items, chain, cache="memory"), prefetch_batches=1)
    # MONAI's own ThreadDataLoader would end the pass early without an error
    with pytest.raises(RuntimeError, match="BrokenAugmentation") as failure:
        list(loader)
    assert "scan_3: label has no foreground" in str(failure.value.__cause__)  # as a plain loader says


@pytest.mark.parametrize("cache", ["memory", "disk", "none"])
def test_with_transform_shares_the_cached_prefix_and_runs_its_own_random_tail(tmp_path, cache):
    from unet_med.data.datasets import with_transform

    CountingLoad.calls = 0
    load = CountingLoad(["image"])
    chain = Compose([load, RandSpatialCropd(["image"], roi_size=(4, 4), random_size=False)])
    ds = make_dataset([{"offset": 0.0}, {"offset": 1000.0}], chain, cache=cache, cache_dir=tmp_path / "c")
    ds[0], ds[1]
    calls = CountingLoad.calls
    larger = RandSpatialCropd(["image"], roi_size=(6, 6), random_size=False)
    other = with_transform(ds, Compose([load, larger]))
    crop = other[1]["image"]
    assert crop.shape == (1, 6, 6) and float(crop.min()) >= 1000.0
    assert ds[1]["image"].shape == (1, 4, 4)  # the original keeps its chain
    # no second load where the prefix is cached
    assert CountingLoad.calls == calls + {"memory": 0, "disk": 0, "none": 2}[cache]
