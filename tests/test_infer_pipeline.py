"""``unet-med infer`` end to end on a tiny 3D bundle: geometry of outputs (NIfTI and DICOM inputs
with rotated directions and anisotropic spacing), report rows, resume, bad scans, parts, DICOM SEG."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
import torch

from pipelines.cli import main
from pipelines.infer import load_bundle, output_path, output_stem, segment_scans
from unet_med.data.dicom import write_dicom_series
from unet_med.data.writing import save_nifti
from unet_med.networks import UNet

LABELS = ["background", "organ", "lesion"]


def _affine(spacing, angle_deg, origin) -> np.ndarray:
    t = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([-1.0, -1.0, 1.0]) @ np.diag(spacing)
    a[:3, 3] = origin
    return a


def _volume(shape, seed) -> np.ndarray:
    rng = np.random.default_rng(seed)
    zz = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    ball = (zz**2).sum(0) < 0.5
    return (ball * 300 - 500 + rng.normal(0, 30, shape)).astype(np.int16)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """A bundle folder whose inference.json has the agreed ids and a resampling preprocessing."""
    root = tmp_path_factory.mktemp("bundle")
    (root / "configs").mkdir()
    (root / "models").mkdir()
    config = {
        "imports": [
            "$import unet_med.inferers", "$import unet_med.postprocessing", "$import unet_med.transforms"
        ],
        "device": "$torch.device('cpu')",
        "class_names": LABELS,
        "network_def": {
            "_target_": "unet_med.networks.UNet",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 3,
            "widths": [2, 4],
        },
        "inferer": {
            "_target_": "unet_med.inferers.OverlapTileInferer", "output_tile_size": 12, "sw_batch_size": 2
        },
        # the project's chain: LoadImaged (skipped by the command), orientation, resampling,
        # a foreground crop and the CT window; all spatial steps must be undone for the outputs
        "preprocessing": {
            "_target_": "unet_med.transforms.inference_transforms",
            "keys": ["image"],
            "spacing": [1.0, 1.0, 2.0],
            "window": [-500, 500],
            "crop_foreground": True,
            "foreground_threshold": -350,
            "foreground_margin": 2,
        },
        "postprocessing": {
            "_target_": "unet_med.postprocessing.postprocessing_transforms",
            "preprocessing": "@preprocessing",
            "largest_component": True,
        },
    }
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    (root / "configs" / "metadata.json").write_text(json.dumps({"name": "tiny3d", "version": "0.0.1"}))
    torch.manual_seed(0)
    net = UNet(3, 1, 3, widths=(2, 4))
    with torch.no_grad():  # make the untrained net segment the bright ball as label 1
        net.head[-1].bias.copy_(torch.tensor([0.0, -0.2, -3.0]))
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


@pytest.fixture(scope="module")
def scans_dir(tmp_path_factory) -> Path:
    """Two NIfTI scans and one DICOM series, all rotated and anisotropic."""
    root = tmp_path_factory.mktemp("scans")
    save_nifti(_volume((22, 18, 9), 1), _affine((0.9, 0.8, 2.5), 12, (10, -20, 30)), root / "ct_a.nii.gz")
    b_affine = _affine((1.1, 1.1, 3.0), -8, (0, 5, -40))
    save_nifti(_volume((17, 20, 7), 2), b_affine, root / "sub" / "ct_b.nii.gz")
    write_dicom_series(
        _volume((20, 16, 8), 3), _affine((0.7, 0.7, 2.0), 20, (-30, 15, 60)), root / "series1",
        series_uid="1.2.826.0.1.3680043.8.498.1", subject="SECRETNAME",
    )
    return root


def _infer(bundle: Path, scans: Path, out: Path, *extra: str) -> int:
    return main(["infer", "--bundle", str(bundle), "--input", str(scans), "--output", str(out), *extra])


def _report(out: Path, name: str = "report.csv") -> pd.DataFrame:
    return pd.read_csv(out / name, dtype={"error": str}).fillna({"error": ""})


def test_outputs_keep_each_scans_geometry_and_report_volumes(bundle, scans_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _infer(bundle, scans_dir, out, "--dicom-seg") == 0
    summary = capsys.readouterr().out
    assert "3 scans: 3 ok, 0 failed, 0 skipped" in summary
    report = _report(out)
    assert list(report.columns) == [
        "scan_id", "source", "status", "error", "seconds",
        "voxels_organ", "voxels_lesion", "volume_ml_organ", "volume_ml_lesion",
    ]
    assert set(report["status"]) == {"ok"}
    assert len(report) == 3
    for row in report.itertuples():
        seg = out / f"{output_stem(row.scan_id)}_seg.nii.gz"
        assert (out / f"{output_stem(row.scan_id)}_qc.png").stat().st_size > 1000
        src = scans_dir / row.source
        # geometry: read both with SimpleITK (DICOM series reader for the folder)
        if src.is_dir():
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(src)))
            ref = reader.Execute()
        else:
            ref = sitk.ReadImage(str(src))
            ref_nib, seg_nib = nib.load(str(src)), nib.load(str(seg))
            np.testing.assert_allclose(seg_nib.affine, ref_nib.affine, atol=1e-5)
            assert seg_nib.shape == ref_nib.shape
        got = sitk.ReadImage(str(seg))
        assert got.GetSize() == ref.GetSize()
        np.testing.assert_allclose(got.GetSpacing(), ref.GetSpacing(), atol=1e-4)
        np.testing.assert_allclose(got.GetOrigin(), ref.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(got.GetDirection(), ref.GetDirection(), atol=1e-5)
        assert not np.allclose(np.reshape(got.GetDirection(), (3, 3)), np.eye(3))
        labels = np.asanyarray(nib.load(str(seg)).dataobj)
        assert labels.dtype == np.uint8
        assert 0 < row.voxels_organ < labels.size  # the bright ball is found, not everything
        assert row.voxels_organ == int((labels == 1).sum())
        voxel_ml = np.prod(ref.GetSpacing()) / 1000
        assert row.volume_ml_organ == pytest.approx(row.voxels_organ * voxel_ml, rel=1e-4)
    # the DICOM input also got a DICOM SEG that references its series
    dicom_row = report[report["source"] == "series1"].iloc[0]
    seg_ds = pydicom.dcmread(out / f"{output_stem(dicom_row.scan_id)}_seg.dcm")
    assert seg_ds.Modality == "SEG"
    assert seg_ds.ReferencedSeriesSequence[0].SeriesInstanceUID == "1.2.826.0.1.3680043.8.498.1"
    assert [s.SegmentLabel for s in seg_ds.SegmentSequence] == ["organ", "lesion"]
    frames = seg_ds.pixel_array  # (segments x slices, rows, columns)
    nifti = np.asanyarray(nib.load(str(out / f"{output_stem(dicom_row.scan_id)}_seg.nii.gz")).dataobj)
    assert frames.shape == (2 * 8, 16, 20)
    assert int(frames[:8].sum()) == int((nifti == 1).sum())
    # patient names never become file names
    assert not any("SECRET" in p.name for p in out.iterdir())


def test_resume_skips_finished_scans_and_redoes_truncated_ones(bundle, scans_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _infer(bundle, scans_dir, out, "--no-qc") == 0
    first = _report(out).set_index("scan_id")
    segs = sorted(out.glob("*_seg.nii.gz"))
    stamps = {p: p.stat().st_mtime_ns for p in segs}
    # a crash mid-write of a non-atomic writer: the file is cut short
    victim = segs[0]
    victim.write_bytes(victim.read_bytes()[:40])
    capsys.readouterr()
    assert _infer(bundle, scans_dir, out, "--no-qc") == 0
    assert "1 ok, 0 failed, 2 skipped" in capsys.readouterr().out
    second = _report(out).set_index("scan_id")
    redone = second.index[second["status"] == "ok"].tolist()
    assert [f"{output_stem(s)}_seg.nii.gz" for s in redone] == [victim.name]
    for p in segs[1:]:
        assert p.stat().st_mtime_ns == stamps[p]  # not rewritten
    # skipped rows still carry the volumes read back from the finished outputs
    pd.testing.assert_series_equal(second["voxels_organ"], first["voxels_organ"])
    assert not list(out.glob(".*tmp*"))  # no temp files left behind


def test_bad_scans_get_a_failed_row_and_the_others_are_segmented(bundle, scans_dir, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    for p in scans_dir.rglob("*.nii.gz"):
        (scans / p.name).write_bytes(p.read_bytes())
    good = (scans / "ct_a.nii.gz").read_bytes()
    (scans / "truncated.nii.gz").write_bytes(good[: len(good) // 2])
    save_nifti(np.zeros((8, 8, 6, 3), np.int16), np.eye(4), scans / "four_d.nii.gz")
    save_nifti(np.zeros((16, 16), np.int16), np.eye(4), scans / "flat2d.nii.gz")
    out = tmp_path / "out"
    code = _infer(bundle, scans, out, "--no-qc")
    assert code == 1
    captured = capsys.readouterr()
    report = _report(out).set_index("source")
    assert report.loc["ct_a.nii.gz", "status"] == "ok"
    assert report.loc["ct_b.nii.gz", "status"] == "ok"
    failed = report[report["status"] == "failed"]
    assert set(failed.index) == {"truncated.nii.gz", "four_d.nii.gz", "flat2d.nii.gz"}
    assert "truncated" in failed.loc["truncated.nii.gz", "error"]
    assert "4D" in failed.loc["four_d.nii.gz", "error"]
    assert "2D image" in failed.loc["flat2d.nii.gz", "error"] and "3D" in failed.loc["flat2d.nii.gz", "error"]
    assert "2 ok, 3 failed" in captured.out


def test_help_documents_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["infer", "--help"])
    text = capsys.readouterr().out
    assert "exit codes" in text and "1  at least one scan failed" in text


def test_usage_errors_exit_2(bundle, scans_dir, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _infer(bundle, empty, tmp_path / "o1") == 2
    assert "no NIfTI files or DICOM series" in capsys.readouterr().err
    assert _infer(tmp_path / "nobundle", scans_dir, tmp_path / "o2") == 2
    assert "bundle folder not found" in capsys.readouterr().err
    assert _infer(bundle, scans_dir, tmp_path / "o3", "--checkpoint", str(tmp_path / "missing.pt")) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    assert _infer(bundle, scans_dir, tmp_path / "o4", "--checkpoint", str(junk)) == 2
    assert "weights_only=True" in capsys.readouterr().err
    assert _infer(bundle, scans_dir, tmp_path / "o5", "--num-parts", "2", "--part-id", "2") == 2
    assert "--part-id" in capsys.readouterr().err


def test_parts_share_one_folder_and_merge(bundle, scans_dir, tmp_path, capsys):
    out = tmp_path / "out"
    for k in range(2):
        assert _infer(bundle, scans_dir, out, "--no-qc", "--num-parts", "2", "--part-id", str(k)) == 0
    parts = [_report(out, f"report.part-{k}-of-2.csv") for k in range(2)]
    ids = [set(p["scan_id"]) for p in parts]
    assert len(ids[0]) == 2 and len(ids[1]) == 1 and not ids[0] & ids[1]
    assert not (out / "report.csv").exists()
    assert main(["infer", "--merge-reports", str(out)]) == 0
    merged = _report(out)
    assert list(merged["scan_id"]) == sorted(ids[0] | ids[1])
    assert len(list(out.glob("*_seg.nii.gz"))) == 3
    assert main(["infer", "--merge-reports", str(tmp_path)]) == 2


def test_tta_flag_switches_the_inferer_to_flip_averaging(bundle, scans_dir, tmp_path, capsys):
    loaded = load_bundle(bundle, tta=True)
    assert loaded.inferer.tta_flips is True
    assert loaded.labels == {0: "background", 1: "organ", 2: "lesion"}
    assert not load_bundle(bundle).inferer.tta_flips
    overrides = {"inferer#output_tile_size": 4, "class_names": ["bg", "a", "b"]}
    overridden = load_bundle(bundle, overrides=overrides)
    assert overridden.inferer.output_tile_size == 4 and overridden.labels[1] == "a"
    # --set goes through the same overrides; a network override that the weights do not fit is a usage error
    assert _infer(bundle, scans_dir, tmp_path / "o", "--set", "network_def#widths=[4, 8]") == 2
    assert "weights do not fit" in capsys.readouterr().err


@dataclass
class _Scan:
    scan_id: str
    source: str
    files: list = field(default_factory=list)
    kind: str = "nifti"
    shape: tuple | None = None


def test_output_paths_never_leave_the_output_folder(bundle, scans_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for bad in ["../../etc/passwd", "a/b", "..", ".hidden", "x\x00y", "/abs", "ok name"]:
        path = output_path(out, bad, "_seg.nii.gz")
        assert path.parent == out and path.resolve().parent == out.resolve()
        assert not path.name.startswith(".")
    assert output_stem("ct_001") == "ct_001"
    assert output_stem("a/b") != output_stem("a_b")  # changed ids get a hash: no collisions
    loaded = load_bundle(bundle)
    scan = _Scan("../../escape", "ct_a.nii.gz", [scans_dir / "ct_a.nii.gz"])
    result = segment_scans([scan], loaded, out, report_path=out / "report.csv", qc=False, progress=False)
    assert result.rows[0]["status"] == "ok"
    assert [p.parent for p in out.rglob("*_seg.nii.gz")] == [out]
    assert not (tmp_path.parent / "escape_seg.nii.gz").exists()


def test_next_scan_loads_in_the_background_while_the_current_one_is_predicted(
    bundle, scans_dir, tmp_path, monkeypatch
):
    import threading
    import time

    import pipelines.infer as infer

    events = []
    real_prepare, real_segment = infer.prepare_scan, infer.segment_prepared

    def prepare(scan, b):
        events.append(("load", scan.scan_id, threading.current_thread().name, time.perf_counter()))
        return real_prepare(scan, b)

    def segment(prepared, b, name):
        events.append(("predict-start", name, threading.current_thread().name, time.perf_counter()))
        time.sleep(0.3)
        result = real_segment(prepared, b, name)
        events.append(("predict-end", name, threading.current_thread().name, time.perf_counter()))
        return result

    monkeypatch.setattr(infer, "prepare_scan", prepare)
    monkeypatch.setattr(infer, "segment_prepared", segment)
    scans = [
        _Scan("a", "ct_a.nii.gz", [scans_dir / "ct_a.nii.gz"]),
        _Scan("b", "sub/ct_b.nii.gz", [scans_dir / "sub" / "ct_b.nii.gz"]),
    ]
    out = tmp_path / "out"
    loaded = load_bundle(bundle)
    result = segment_scans(scans, loaded, out, report_path=out / "r.csv", qc=False, progress=False)
    assert [r["status"] for r in result.rows] == ["ok", "ok"]
    loads = [e for e in events if e[0] == "load"]
    assert all(e[2].startswith("scan-loader") for e in loads)  # never on the predicting thread
    first_end = next(e[3] for e in events if e[0] == "predict-end")
    assert loads[1][3] < first_end  # scan b was loading while scan a was predicted


def test_reference_manifest_adds_dice_and_split_selects_scans(bundle, scans_dir, tmp_path, capsys):
    first = tmp_path / "first"
    assert _infer(bundle, scans_dir, first, "--no-qc") == 0
    refs = tmp_path / "refs"
    refs.mkdir()
    a_seg = first / "ct_a_seg.nii.gz"
    (refs / "a.nii.gz").write_bytes(a_seg.read_bytes())  # the prediction itself: Dice 1
    img = nib.load(str(a_seg))
    save_nifti(np.zeros(img.shape, np.uint8), img.affine, refs / "b.nii.gz")  # empty: Dice 0
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(
        {
            "subject_id": ["a", "b"],
            "image": [str(scans_dir / "ct_a.nii.gz"), str(scans_dir / "sub" / "ct_b.nii.gz")],
            "label": ["refs/a.nii.gz", ""],
            "split": ["test", "train"],
        }
    ).to_csv(manifest, index=False)
    capsys.readouterr()
    out = tmp_path / "out"
    assert _infer(bundle, scans_dir, out, "--no-qc", "--reference", str(manifest), "--split", "test") == 0
    summary = capsys.readouterr().out
    assert "1 scans: 1 ok" in summary and "mean Dice 1.000 over 1 scans" in summary
    report = _report(out)
    assert list(report["scan_id"]) == ["ct_a"]  # only the test split
    assert report.loc[0, "dice_organ"] == pytest.approx(1.0)
    assert np.isnan(report.loc[0, "dice_lesion"])  # absent from both
    # a wrong reference gives Dice 0 for the predicted label
    pd.DataFrame(
        {"subject_id": ["a"], "image": [str(scans_dir / "ct_a.nii.gz")], "label": ["refs/b.nii.gz"],
         "split": ["test"]}
    ).to_csv(manifest, index=False)
    out2 = tmp_path / "out2"
    assert _infer(bundle, scans_dir, out2, "--no-qc", "--reference", str(manifest)) == 0
    report = _report(out2).set_index("source")
    assert len(report) == 3  # no --split: every scan, Dice where a reference exists
    assert report.loc["ct_a.nii.gz", "dice_organ"] == pytest.approx(0.0)
    assert np.isnan(report.loc["sub/ct_b.nii.gz", "dice_organ"])


def test_checkpoint_network_json_overrides_the_bundles_network_def(bundle, tmp_path):
    # a training with other widths than inference.json's network_def writes network.json beside
    # its model.pt; infer must rebuild that architecture, not the bundle's default one
    trained = UNet(3, 1, 3, widths=(3, 6))
    models = tmp_path / "run" / "models"
    models.mkdir(parents=True)
    torch.save(trained.state_dict(), models / "model.pt")
    (models / "network.json").write_text(json.dumps({"_target_": "unet_med.networks.UNet", **trained.config}))
    loaded = load_bundle(bundle, checkpoint=models / "model.pt")
    assert loaded.network.config["widths"] == [3, 6]
    for name, value in trained.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[name], value)
