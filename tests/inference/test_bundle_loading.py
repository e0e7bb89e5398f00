"""Loading a bundle for inference: checkpoint forms, test-time augmentation, overrides, and the
checkpoint's network.json replacing the config's network_def."""

from __future__ import annotations

import json

import pytest
import torch

from unet_med.inference.bundle_loading import BundleError, load_bundle, load_checkpoint_state
from unet_med.networks import UNet


def test_checkpoint_forms_and_junk(tmp_path):
    state = {"w": torch.ones(2), "b": torch.zeros(1)}
    torch.save(state, tmp_path / "model.pt")
    assert set(load_checkpoint_state(tmp_path / "model.pt")) == {"w", "b"}
    torch.save({"network": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "last.pt")
    assert set(load_checkpoint_state(tmp_path / "last.pt")) == {"w", "b"}
    torch.save({"epoch": 3}, tmp_path / "nostate.pt")
    with pytest.raises(BundleError, match="no network state_dict"):
        load_checkpoint_state(tmp_path / "nostate.pt")
    torch.save({"net": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a pickled module
    with pytest.raises(BundleError, match="weights_only=True"):
        load_checkpoint_state(tmp_path / "pickled.pt")


def test_nested_wrapper_prefixes_are_all_removed(tmp_path):
    # DDP around torch.compile (and the other way round) stacks both prefixes
    state = {"module._orig_mod.w": torch.ones(2), "_orig_mod.module.b": torch.zeros(1), "c": torch.ones(1)}
    torch.save(state, tmp_path / "model.pt")
    assert sorted(load_checkpoint_state(tmp_path / "model.pt")) == ["b", "c", "w"]


def test_tta_flag_switches_the_inferer_to_flip_averaging(infer_bundle):
    loaded = load_bundle(infer_bundle, tta=True)
    assert loaded.inferer.tta_flips is True
    assert loaded.labels == {0: "background", 1: "organ", 2: "lesion"}
    assert not load_bundle(infer_bundle).inferer.tta_flips
    overrides = {"inferer#output_tile_size": 4, "class_names": ["bg", "a", "b"]}
    overridden = load_bundle(infer_bundle, overrides=overrides)
    assert overridden.inferer.output_tile_size == 4 and overridden.labels[1] == "a"


def test_checkpoint_network_json_overrides_the_bundles_network_def(infer_bundle, tmp_path):
    # a training with other widths than inference.json's network_def writes network.json beside
    # its model.pt; infer must rebuild that architecture, not the bundle's default one
    trained = UNet(3, 1, 3, widths=(3, 6))
    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    torch.save(trained.state_dict(), models / "model.pt")
    (models / "network.json").write_text(json.dumps({"_target_": "unet_med.networks.UNet", **trained.config}))
    loaded = load_bundle(infer_bundle, checkpoint=models / "model.pt")
    assert loaded.network.config["widths"] == [3, 6]
    for name, value in trained.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[name], value)
