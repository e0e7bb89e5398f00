"""Datasets cache the deterministic prefix of a transform chain, never the random steps."""

from __future__ import annotations

import numpy as np
import pytest
from monai.transforms import Compose, MapTransform, RandSpatialCropd

from unet_med.data import make_dataset


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
