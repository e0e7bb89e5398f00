"""Plans: normalisation by modality, target spacing, patch/batch within the memory budget and legal
for the valid network, epoch length, refusal for another bundle or manifest, atomic writes, and the
MONAI merge over a bundle's training.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from monai.bundle import ConfigParser

from unet_med.networks import create_unet
from unet_med.networks.shapes import min_input_size, valid_output_size
from unet_med.planning import (
    PLAN_IDS,
    PlanError,
    check_plan,
    dataset_fingerprint,
    make_plan,
    read_plan,
    target_spacing,
    write_plan,
)

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"
FAST = {"base_width": 4, "throughput_flops": 50e9}  # tiny network, no timing: deterministic


@pytest.fixture
def ct_fingerprint(phantom, write_dataset):
    manifest = write_dataset("ct", [phantom("ct", seed=s) for s in range(4)], spacing=(0.8, 0.8, 2.5))
    return dataset_fingerprint(manifest, progress=False)


@pytest.fixture
def mr_fingerprint(phantom, write_dataset):
    manifest = write_dataset("mr", [phantom("mr", seed=s) for s in range(4)], spacing=(1.0, 1.0, 1.0))
    return dataset_fingerprint(manifest, progress=False)


def test_ct_plan_clips_to_the_foreground_percentiles_and_z_scores_with_the_dataset_statistics(ct_fingerprint):
    plan = make_plan(ct_fingerprint, **FAST)
    stats = ct_fingerprint["intensity"]["per_channel"][0]
    assert plan["normalization"] == "ct_dataset"
    assert plan["intensity_clip"] == [stats["percentile_00_5"], stats["percentile_99_5"]]
    assert plan["intensity_mean"] == stats["mean"] and plan["intensity_std"] == stats["std"]
    assert "0.5-99.5 percentiles" in plan["_comments_"]["normalization"]


def test_mr_plan_z_scores_each_scan_over_its_body_foreground(mr_fingerprint):
    plan = make_plan(mr_fingerprint, **FAST)
    assert plan["normalization"] == "zscore_foreground"
    assert plan["intensity_clip"] is plan["intensity_mean"] is plan["intensity_std"] is None
    assert "body foreground" in plan["_comments_"]["normalization"]


def test_every_plan_id_is_explained_and_the_plan_is_plain_json(ct_fingerprint):
    plan = make_plan(ct_fingerprint, **FAST)
    ids = [k for k in plan if not k.startswith("_")]
    assert set(PLAN_IDS) <= set(ids)
    assert set(ids) <= set(plan["_comments_"])
    assert all(isinstance(v, str) and v and v[0] not in "$@%" for v in plan["_comments_"].values())
    assert json.loads(json.dumps(plan)) == plan
    assert plan["manifest"] == ct_fingerprint["manifest"] and Path(plan["manifest"]).is_absolute()
    assert plan["pos"] == 1 and plan["neg"] == 2  # a third of the patches centred on foreground
    assert plan["resample_order_image"] == 1 and plan["resample_order_label"] == 0
    assert plan["prefetch_batches"] == 1  # one training batch made ahead while the step runs


def test_target_spacing_is_the_median_with_nnunets_anisotropy_rule():
    iso = [[1.0, 1.0, 1.2], [0.9, 0.9, 1.0], [1.1, 1.1, 1.4]]
    assert target_spacing(iso)[0] == pytest.approx([1.0, 1.0, 1.2])
    aniso = [[0.7, 0.7, 5.0]] * 4 + [[0.7, 0.7, 3.0], [0.8, 0.8, 5.0]]
    spacing, why = target_spacing(aniso)
    assert spacing[:2] == pytest.approx([0.7, 0.7])  # the in-plane median
    assert spacing[2] == pytest.approx(np.percentile([5, 5, 5, 5, 3, 5], 10))  # 4.0, not the median 5
    assert "anisotropic" in why and "10th percentile" in why


def test_anisotropic_ct_dataset_gets_the_coarse_axis_rule(phantom, write_dataset):
    spacings = [(0.7, 0.7, 5.0), (0.7, 0.7, 5.0), (0.7, 0.7, 3.0), (0.7, 0.7, 5.0), (0.7, 0.7, 5.0)]
    manifest = write_dataset("aniso", [phantom("ct", seed=s) for s in range(5)], spacing=spacings)
    plan = make_plan(dataset_fingerprint(manifest, progress=False), **FAST)
    assert plan["spacing"] == pytest.approx([0.7, 0.7, np.percentile([5, 5, 3, 5], 10)])
    assert "anisotropic" in plan["_comments_"]["spacing"]


def _memory_mb(plan):
    return plan["_planned_with_"]["estimated_memory_mb"]


@pytest.mark.parametrize("budget", [250, 600, 4096])
def test_patch_and_batch_fit_the_budget_and_are_legal_for_the_valid_network(ct_fingerprint, budget):
    plan = make_plan(ct_fingerprint, memory_budget_mb=budget, **FAST)
    spec = create_unet("cicek3d", base_width=4, out_channels=3).spec
    patch, inp = plan["patch_size"], plan["_planned_with_"]["input_patch_size"]
    assert list(min_input_size(patch, spec)) == inp and list(valid_output_size(inp, spec)) == patch
    assert plan["_planned_with_"]["fits_budget"] and _memory_mb(plan) <= budget
    assert plan["batch_size"] == (1 if budget < 600 else 2)  # 2 (nnU-Net) once two fit


def test_patch_follows_the_median_shape_and_shrinks_with_the_budget(ct_fingerprint):
    big = make_plan(ct_fingerprint, memory_budget_mb=4096, **FAST)
    median = big["_planned_with_"]["median_shape"]
    spec = create_unet("cicek3d", base_width=4, out_channels=3).spec
    period = 2**spec.poolings
    # unconstrained: the legal output nearest the median shape on every axis
    assert all(abs(p - m) <= period / 2 for p, m in zip(big["patch_size"], median))
    small = make_plan(ct_fingerprint, memory_budget_mb=250, **FAST)
    assert math.prod(small["patch_size"]) < math.prod(big["patch_size"])
    assert all(s <= b for s, b in zip(small["patch_size"], big["patch_size"]))
    assert "shrunk" in small["_comments_"]["patch_size"]


def test_batch_drops_to_one_when_two_do_not_fit_and_over_budget_is_reported(ct_fingerprint):
    two = make_plan(ct_fingerprint, memory_budget_mb=4096, **FAST)
    one = make_plan(ct_fingerprint, memory_budget_mb=400, **FAST)
    assert _memory_mb(two) > 400  # two full patches do not fit in 400 MiB, one does
    assert one["batch_size"] == 1 and one["patch_size"] == two["patch_size"] and _memory_mb(one) <= 400
    none = make_plan(ct_fingerprint, memory_budget_mb=1, **FAST)
    assert none["batch_size"] == 1 and not none["_planned_with_"]["fits_budget"]
    assert "WARNING" in none["_comments_"]["batch_size"]


def test_iterations_per_epoch_follow_the_step_time_on_cpu_and_nnunets_250_on_gpu(ct_fingerprint):
    fast = make_plan(ct_fingerprint, base_width=4, throughput_flops=1e12)
    slow = make_plan(ct_fingerprint, base_width=4, throughput_flops=1e9)
    step = slow["_planned_with_"]["estimated_step_s"]
    assert 10 <= slow["iterations_per_epoch"] < fast["iterations_per_epoch"] <= 250
    assert slow["iterations_per_epoch"] == max(10, min(250, round(90 / step)))
    gpu = make_plan(ct_fingerprint, base_width=4, device="cuda", memory_budget_mb=4096, throughput_flops=1e12)
    assert gpu["iterations_per_epoch"] == 250 and gpu["val_interval"] == 1
    assert slow["val_interval"] >= fast["val_interval"] >= 1


def test_bundle_follows_the_dimensionality_and_a_wrong_one_is_refused(ct_fingerprint, write_dataset):
    import unet_med.data.demo as demo

    assert make_plan(ct_fingerprint, **FAST)["bundle"] == "unet3d"
    rng = np.random.default_rng(0)
    manifest = write_dataset(
        "2d", [demo.demo_image_2d(rng, 48) for _ in range(3)], spacing=(0.6, 0.6), modality="CT"
    )
    plan2d = make_plan(dataset_fingerprint(manifest, progress=False), **FAST)
    assert plan2d["bundle"] == "unet2d_paper" and len(plan2d["patch_size"]) == 2
    assert plan2d["spacing"] == pytest.approx([0.6, 0.6])
    with pytest.raises(PlanError, match=r"bundle unet2d_paper trains 2D networks but the scans .* are 3D"):
        make_plan(ct_fingerprint, bundle="bundles/unet2d_paper", **FAST)
    with pytest.raises(PlanError, match="unknown bundle"):
        make_plan(ct_fingerprint, bundle="segresnet", **FAST)


def test_training_command_names_the_bundle_the_plan_and_the_manifest(ct_fingerprint):
    plan = make_plan(ct_fingerprint, bundle=str(BUNDLES / "unet3d"), plan_path="runs/PLAN.json", **FAST)
    cmd = plan["training_command"]
    # the documented command: through the project's workflow (override check, executed config)
    workflow = "--workflow_name unet_med.bundle.UNetMedWorkflow"
    assert cmd.startswith(f"python -m monai.bundle run training {workflow} ")
    assert f"--config_file \"['{BUNDLES}/unet3d/configs/training.json','runs/PLAN.json']\"" in cmd
    assert f"--manifest {ct_fingerprint['manifest']}" in cmd and f"--bundle_root {BUNDLES}/unet3d" in cmd


def test_plan_merges_over_the_bundle_config_the_monai_way(ct_fingerprint, tmp_path):
    plan = make_plan(ct_fingerprint, bundle="unet3d", **FAST)
    path = write_plan(plan, tmp_path / "PLAN.json")
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / "unet3d/configs/training.json"), str(path)])
    for key in ("patch_size", "spacing", "batch_size", "normalization", "intensity_clip", "pos", "neg"):
        assert parser.get_parsed_content(key) == plan[key]
    assert parser.get_parsed_content("_comments_") == plan["_comments_"]  # plain strings, no references
    assert parser.get_parsed_content("training_command") == plan["training_command"]
    assert parser.get_parsed_content("input_patch_size") == tuple(plan["_planned_with_"]["input_patch_size"])


def test_a_plan_for_another_bundle_or_a_changed_manifest_is_refused(ct_fingerprint, tmp_path):
    manifest = Path(ct_fingerprint["manifest"])
    plan = make_plan(ct_fingerprint, **FAST)
    path = write_plan(plan, tmp_path / "PLAN.json")
    check_plan(path, bundle_name="bundles/unet3d", manifest=manifest)
    check_plan(plan, bundle_name="unet3d", manifest=manifest)
    with pytest.raises(PlanError, match=r"made for bundle 'unet3d', not for bundle 'unet2d_paper'"):
        check_plan(path, bundle_name=BUNDLES / "unet2d_paper", manifest=manifest)
    manifest.write_text(manifest.read_text() + "extra,images/case00_0000.nii.gz,,test\n")
    old_sha = plan["manifest_sha256"][:12]
    both = (
        rf"made for manifest {manifest} \(sha256 {old_sha}\.\.\.\), "
        rf"not for manifest {manifest} \(sha256 [0-9a-f]{{12}}"
    )
    with pytest.raises(PlanError, match=both):
        check_plan(path, bundle_name="unet3d", manifest=manifest)
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(PlanError, match="not a plan file"):
        read_plan(tmp_path / "other.json")


def test_plan_write_is_atomic(ct_fingerprint, tmp_path, monkeypatch):
    plan = make_plan(ct_fingerprint, **FAST)
    path = write_plan(plan, tmp_path / "PLAN.json")
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_plan({**plan, "batch_size": object()}, path)  # cannot be serialised
    real = Path.write_text

    def half_then_fail(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_plan({**plan, "batch_size": 7}, path)
    with pytest.raises(OSError, match="disk full"):
        write_plan(plan, tmp_path / "new.json")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["PLAN.json"]


def test_a_cpu_plan_keeps_the_deepest_network_whose_smallest_step_fits_the_step_target(ct_fingerprint):
    from unet_med.networks import preset_depth
    from unet_med.planning.plan import CPU_STEP_TARGET_S, NOMINAL_CPU_FLOPS, STEP_OVERHEAD
    from unet_med.planning.training_cost import training_cost

    full = preset_depth("cicek3d")
    cpu = make_plan(ct_fingerprint, base_width=8)  # nominal CPU throughput: reproducible
    target_flops = CPU_STEP_TARGET_S * NOMINAL_CPU_FLOPS / STEP_OVERHEAD

    def smallest_step_flops(depth):
        net = create_unet("cicek3d", out_channels=cpu["num_classes"], base_width=8, depth=depth)
        smallest = min_input_size((1, 1, 1), net.spec)
        return training_cost(net, min_input_size((8, 8, 8), net.spec)).step_flops(smallest, 1)

    # the 3D U-Net's three poolings cost more than the target even for the smallest output ...
    assert smallest_step_flops(full) > target_flops
    assert cpu["depth"] < full and smallest_step_flops(cpu["depth"]) <= target_flops
    assert "instead of the cicek3d preset's" in cpu["_comments_"]["depth"]
    # the preset's batch norm stays (measured better than instance norm on CPU plans), said why
    assert cpu["norm"] == "batch" and "--norm instance" in cpu["_comments_"]["norm"]
    net = create_unet("cicek3d", out_channels=cpu["num_classes"], base_width=8, depth=cpu["depth"])
    assert net.spec.poolings == cpu["depth"]
    assert list(valid_output_size(cpu["_planned_with_"]["input_patch_size"], net.spec)) == cpu["patch_size"]
    # ... a GPU plan (no step target) and an explicit depth keep what they are given
    gpu = make_plan(ct_fingerprint, base_width=8, device="cuda", memory_budget_mb=4096, throughput_flops=1e13)
    assert gpu["depth"] == full
    given = make_plan(ct_fingerprint, base_width=8, depth=full)
    assert given["depth"] == full and given["_comments_"]["depth"] == "network poolings (given)"
