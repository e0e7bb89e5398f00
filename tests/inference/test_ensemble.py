"""Ensembles of checkpoints: the mean of the members' softmax, one network to the inferer, members
rebuilt from their own network.json, mismatches named, and the folder forms of ``checkpoint``."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

from unet_med.data.discovery import discover_scans
from unet_med.inference.bundle_loading import BundleError, checkpoint_files, load_bundle
from unet_med.inference.ensemble import EnsembleNetwork
from unet_med.inference.prediction import predict_label_map, prepare_scan
from unet_med.inferers import OverlapTileInferer, _Geometry, network_spec
from unet_med.networks import UNet
from unet_med.networks.shapes import min_input_size


def _members(seeds=(1, 2), widths=(2, 4)) -> list[UNet]:
    nets = []
    for seed in seeds:
        torch.manual_seed(seed)
        nets.append(UNet(3, 1, 3, widths=widths).eval())
    return nets


def test_forward_is_the_log_of_the_mean_softmax():
    a, b = _members()
    ensemble = EnsembleNetwork([a, b]).eval()
    x = torch.randn(2, 1, *min_input_size((4, 4, 4), a.spec))
    with torch.no_grad():
        mean = (torch.softmax(a(x), 1) + torch.softmax(b(x), 1)) / 2
        out = ensemble(x)
    torch.testing.assert_close(torch.softmax(out, 1), mean)
    torch.testing.assert_close(out.exp(), mean)  # already normalised: softmax changes nothing
    assert torch.equal(out.argmax(1), mean.argmax(1))
    # what the inferer needs to treat it as one network
    assert network_spec(ensemble) == a.spec
    assert (ensemble.spatial_dims, ensemble.in_channels, ensemble.out_channels) == (3, 1, 3)


def test_overlap_tile_inference_of_the_ensemble_averages_the_members_probabilities():
    a, b = _members()
    ensemble = EnsembleNetwork([a, b]).eval()
    inferer = OverlapTileInferer(6)  # several tiles over the 13 x 11 x 9 image
    image = torch.randn(1, 1, 13, 11, 9)
    with torch.no_grad():
        mean = (torch.softmax(inferer(image, a), 1) + torch.softmax(inferer(image, b), 1)) / 2
        probs = torch.softmax(inferer(image, ensemble), 1)
    assert inferer.plan((13, 11, 9), ensemble).num_tiles > 1
    torch.testing.assert_close(probs, mean)
    assert torch.equal(probs.argmax(1), mean.argmax(1))


def test_the_inferers_memory_estimate_covers_the_ensemble():
    a, b = _members()
    ensemble = EnsembleNetwork([a, b]).eval()
    single, both = OverlapTileInferer(), OverlapTileInferer()
    # the peak bytes per input voxel that the tile planner sizes windows by (measured on "meta")
    per_voxel_single = single._activation_bytes_per_voxel(a, _Geometry(a, 3), 1, None)
    per_voxel_ensemble = both._activation_bytes_per_voxel(ensemble, _Geometry(ensemble, 3), 1, None)
    # members run one after another: one member's activations plus the running mean, not two members'
    assert per_voxel_single < per_voxel_ensemble < 2 * per_voxel_single


def test_members_that_differ_in_margins_or_channels_are_named():
    a = _members()[0]
    deeper = UNet(3, 1, 3, widths=(2, 4, 8))  # two poolings: another context margin
    with pytest.raises(ValueError, match=r"members a.pt and deep.pt have different shape arithmetic"):
        EnsembleNetwork([a, deeper], names=["a.pt", "deep.pt"])
    four_classes = UNet(3, 1, 4, widths=(2, 4))
    with pytest.raises(ValueError, match=r"member 0 and member 1 differ in out_channels: 3 vs 4"):
        EnsembleNetwork([a, four_classes])
    with pytest.raises(ValueError, match="at least 2 members"):
        EnsembleNetwork([a])


def test_two_copies_of_one_checkpoint_segment_as_the_single_model(infer_bundle, infer_scans, tmp_path):
    copies = []
    for name in ("fold0", "fold1"):
        (tmp_path / name).mkdir()
        copies.append(shutil.copy(infer_bundle / "models" / "model.pt", tmp_path / name / "model.pt"))
    single = load_bundle(infer_bundle)
    ensemble = load_bundle(infer_bundle, checkpoint=copies)
    assert isinstance(single.network, UNet)  # one checkpoint: the network itself, as before
    assert isinstance(ensemble.network, EnsembleNetwork)
    assert ensemble.checkpoints == tuple(map(Path, copies))
    for scan in discover_scans(infer_scans).scans:
        labels = [predict_label_map(prepare_scan(scan, b), b, scan.scan_id) for b in (single, ensemble)]
        assert (labels[0] == 1).any()
        assert (labels[0] == labels[1]).all()


def test_members_are_rebuilt_from_their_own_network_json(infer_bundle, training_run, tmp_path):
    narrow = training_run(tmp_path / "narrow", widths=(2, 4), seed=1)
    wide = training_run(tmp_path / "wide", widths=(3, 6), seed=2)  # same margins, other widths
    loaded = load_bundle(infer_bundle, checkpoint=[narrow, wide])
    assert [m.config["widths"] for m in loaded.network.members] == [[2, 4], [3, 6]]
    for member, path in zip(loaded.network.members, (narrow, wide)):
        for name, value in torch.load(path, weights_only=True).items():
            assert torch.equal(member.state_dict()[name], value)


def test_members_with_other_margins_are_a_bundle_error_naming_both(infer_bundle, training_run, tmp_path):
    a = training_run(tmp_path / "a", widths=(2, 4))
    deep = training_run(tmp_path / "deep", widths=(2, 4, 8))
    with pytest.raises(
        BundleError,
        match=rf"members {re.escape(str(a))} and {re.escape(str(deep))} have different shape arithmetic",
    ):
        load_bundle(infer_bundle, checkpoint=[a, deep])


def test_members_whose_plans_differ_are_refused_with_both_files(planned_bundle, training_run, tmp_path):
    plan = {"normalization": "ct_dataset", "intensity_clip": [-100, 300], "intensity_mean": 80.0,
            "intensity_std": 60.0, "batch_size": 2}  # fmt: skip
    a = training_run(tmp_path / "a", plan=plan)
    b = training_run(tmp_path / "b", plan={**plan, "batch_size": 4})  # training-only ids may differ
    loaded = load_bundle(planned_bundle, checkpoint=[a, b])
    assert loaded.plan == {k: v for k, v in plan.items() if k != "batch_size"}
    assert loaded.plan_file == a.parent / "plan.json"
    c = training_run(tmp_path / "c", plan={**plan, "intensity_mean": 90.0})
    with pytest.raises(
        BundleError,
        match=rf"{re.escape(str(a.parent))}/plan.json and {re.escape(str(c.parent))}/plan.json differ in "
        r"intensity_mean: 80.0 vs 90.0",
    ):
        load_bundle(planned_bundle, checkpoint=[a, c])
    d = training_run(tmp_path / "d")
    with pytest.raises(
        BundleError,
        match=rf"{re.escape(str(d))} \(no plan.json beside it\) differ in intensity_clip: .* vs unset",
    ):
        load_bundle(planned_bundle, checkpoint=[a, d])


def test_checkpoint_folders(tmp_path, training_run):
    runs = tmp_path / "cv"
    fold1, fold0 = training_run(runs / "fold1"), training_run(runs / "fold0")
    (fold0.parent / "checkpoint_last.pt").write_bytes(b"resume state")  # not a member
    artifact = runs / "fold0" / "mlartifacts" / "1" / "abc" / "artifacts" / "models"
    artifact.mkdir(parents=True)
    (artifact / "model.pt").write_bytes(b"MLflow's copy")  # not a member either
    default = tmp_path / "default.pt"
    assert checkpoint_files(None, default) == [default]
    assert checkpoint_files(runs, default) == [fold0, fold1]  # sorted by path
    assert checkpoint_files(fold1.parent, default) == [fold1]  # a run's models folder: its best
    assert checkpoint_files([fold1, runs / "fold0"], default) == [fold1, fold0]  # in the given order
    loose = tmp_path / "loose"
    loose.mkdir()
    for name in ("b.pt", "a.pt", "notes.txt"):
        (loose / name).write_bytes(b"")
    assert checkpoint_files(loose, default) == [loose / "a.pt", loose / "b.pt"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="empty holds no checkpoints"):
        checkpoint_files(tmp_path / "empty", default)
    with pytest.raises(BundleError, match="no checkpoint given"):
        checkpoint_files([], default)
