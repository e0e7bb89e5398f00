"""The plan a checkpoint was trained with (``plan.json`` beside it) applied at inference: training's
preprocessing without any ``--set``; explicit overrides still win; a broken plan is named."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from monai.data import MetaTensor

from unet_med.inference.bundle_loading import BundleError, load_bundle

PLAN = {
    "plan_version": 1,
    "bundle": "unet3d",
    "normalization": "ct_dataset",
    "intensity_clip": [-100.0, 300.0],
    "intensity_mean": 100.0,
    "intensity_std": 50.0,
    "spacing": [2.0, 2.0, 2.0],
    "resample_order_image": 0,
    "patch_size": [20, 20, 20],  # training-only ids: inference.json does not define them
    "batch_size": 2,
    "_comments_": {"normalization": "CT: clip to the foreground percentiles, z-score"},
}


def _preprocess(bundle, value: float = 200.0) -> torch.Tensor:
    """The bundle's preprocessing of a constant 20 x 16 x 10 image at 1 mm."""
    image = MetaTensor(torch.full((1, 20, 16, 10), value), affine=torch.eye(4))
    return bundle.preprocessing({"image": image})["image"]


def _checkpoint_with_plan(bundle_dir, plan) -> None:
    (bundle_dir / "models" / "plan.json").write_text(json.dumps(plan))


def test_without_a_plan_the_bundles_own_preprocessing_is_used(planned_bundle):
    loaded = load_bundle(planned_bundle)
    assert loaded.plan is None and loaded.plan_file is None
    out = _preprocess(loaded)
    assert tuple(out.shape[1:]) == (20, 16, 6)  # spacing 1 x 1 x 2 mm
    assert torch.allclose(out, torch.tensor(0.7))  # CT window -500..500 scaled to [0, 1]


def test_plan_beside_the_checkpoint_sets_the_preprocessing(planned_bundle):
    _checkpoint_with_plan(planned_bundle, PLAN)
    loaded = load_bundle(planned_bundle)
    assert loaded.plan_file == planned_bundle / "models" / "plan.json"
    # only the ids inference.json defines; training-only ids and "_" keys are skipped
    assert loaded.plan == {
        k: PLAN[k]
        for k in ("normalization", "intensity_clip", "intensity_mean", "intensity_std", "spacing",
                  "resample_order_image")
    }  # fmt: skip
    out = _preprocess(loaded)
    assert tuple(out.shape[1:]) == (10, 8, 6)  # the plan's 2 mm spacing
    assert torch.allclose(out, torch.tensor(2.0))  # (200 - 100) / 50: the dataset's z-score
    assert torch.allclose(_preprocess(loaded, 1000.0), torch.tensor(4.0))  # clipped at 300 first


def test_explicit_overrides_win_over_the_plan(planned_bundle):
    _checkpoint_with_plan(planned_bundle, PLAN)
    loaded = load_bundle(planned_bundle, overrides={"intensity_mean": 0.0, "spacing": [1.0, 1.0, 1.0]})
    out = _preprocess(loaded)
    assert tuple(out.shape[1:]) == (20, 16, 10)
    assert torch.allclose(out, torch.tensor(4.0))  # (200 - 0) / 50


def test_plan_of_a_checkpoint_elsewhere_is_the_one_applied(planned_bundle, training_run, tmp_path):
    checkpoint = training_run(tmp_path / "run", plan={**PLAN, "normalization": "none"})
    _checkpoint_with_plan(planned_bundle, PLAN)  # the bundle's own models/ plan is not this checkpoint's
    loaded = load_bundle(planned_bundle, checkpoint=checkpoint)
    assert loaded.plan_file == checkpoint.parent / "plan.json"
    assert torch.allclose(_preprocess(loaded), torch.tensor(200.0))


def test_a_plan_that_is_not_json_is_named(planned_bundle, tmp_path):
    bundle = tmp_path / "copy"
    shutil.copytree(planned_bundle, bundle)
    (bundle / "models" / "plan.json").write_text('{"normalization": "ct_dataset",')
    with pytest.raises(BundleError, match=r"models/plan.json: not valid JSON"):
        load_bundle(bundle)
    (bundle / "models" / "plan.json").write_text("[1, 2]")
    with pytest.raises(
        BundleError, match=r"models/plan.json: expected a JSON object of config ids, found list"
    ):
        load_bundle(bundle)
