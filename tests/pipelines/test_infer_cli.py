"""``unet-med infer`` end to end on a tiny 3D bundle: geometry of outputs (NIfTI and DICOM inputs
with rotated directions and anisotropic spacing), report rows, resume, bad scans, parts, DICOM SEG,
reference Dice, --help and exit codes, the checkpoint's plan, ensembles of checkpoints."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk
import torch

from pipelines.cli import main
from unet_med.data.writing import save_nifti
from unet_med.inference.outputs import output_stem
from unet_med.inference.report import STAGE_COLUMNS
from unet_med.networks import UNet
from unet_med.tracking.linked_runs import TRAINING_RUN_TAG, one_shot_run
from unet_med.tracking.run_record import write_run_record
from unet_med.tracking.store import sqlite_store_uri


def _infer(bundle: Path, scans: Path, out: Path, *extra: str) -> int:
    return main(["infer", "--bundle", str(bundle), "--input", str(scans), "--output", str(out), *extra])


def _report(out: Path, name: str = "report.csv") -> pd.DataFrame:
    return pd.read_csv(out / name, dtype={"error": str}).fillna({"error": ""})


def test_outputs_keep_each_scans_geometry_and_report_volumes(infer_bundle, infer_scans, tmp_path, capsys):
    out = tmp_path / "out"
    assert _infer(infer_bundle, infer_scans, out, "--dicom-seg") == 0
    summary = capsys.readouterr().out
    assert "3 scans: 3 ok, 0 failed, 0 skipped" in summary
    report = _report(out)
    assert list(report.columns) == [
        "scan_id",
        "source",
        "status",
        "error",
        "seconds",
        "kind",
        "study_id",
        "selection",
        "warning",
        "voxels_organ",
        "voxels_lesion",
        "volume_ml_organ",
        "volume_ml_lesion",
    ] + STAGE_COLUMNS
    assert set(report["status"]) == {"ok"}
    assert len(report) == 3
    for row in report.itertuples():
        seg = out / f"{output_stem(row.scan_id)}_seg.nii.gz"
        assert (out / f"{output_stem(row.scan_id)}_qc.png").stat().st_size > 1000
        src = infer_scans / row.source
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


def test_resume_skips_finished_scans_and_redoes_truncated_ones(infer_bundle, infer_scans, tmp_path, capsys):
    out = tmp_path / "out"
    assert _infer(infer_bundle, infer_scans, out, "--no-qc") == 0
    first = _report(out).set_index("scan_id")
    segs = sorted(out.glob("*_seg.nii.gz"))
    stamps = {p: p.stat().st_mtime_ns for p in segs}
    # a crash mid-write of a non-atomic writer: the file is cut short
    victim = segs[0]
    victim.write_bytes(victim.read_bytes()[:40])
    capsys.readouterr()
    assert _infer(infer_bundle, infer_scans, out, "--no-qc") == 0
    assert "1 ok, 0 failed, 2 skipped" in capsys.readouterr().out
    second = _report(out).set_index("scan_id")
    redone = second.index[second["status"] == "ok"].tolist()
    assert [f"{output_stem(s)}_seg.nii.gz" for s in redone] == [victim.name]
    for p in segs[1:]:
        assert p.stat().st_mtime_ns == stamps[p]  # not rewritten
    # skipped rows still carry the volumes read back from the finished outputs
    pd.testing.assert_series_equal(second["voxels_organ"], first["voxels_organ"])
    assert not list(out.glob(".*tmp*"))  # no temp files left behind


def test_bad_scans_get_a_failed_row_and_the_others_are_segmented(infer_bundle, infer_scans, tmp_path, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    for p in infer_scans.rglob("*.nii.gz"):
        (scans / p.name).write_bytes(p.read_bytes())
    good = (scans / "ct_a.nii.gz").read_bytes()
    (scans / "truncated.nii.gz").write_bytes(good[: len(good) // 2])
    save_nifti(np.zeros((8, 8, 6, 3), np.int16), np.eye(4), scans / "four_d.nii.gz")
    save_nifti(np.zeros((16, 16), np.int16), np.eye(4), scans / "flat2d.nii.gz")
    out = tmp_path / "out"
    code = _infer(infer_bundle, scans, out, "--no-qc")
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
    assert "--select RULE" in text and "series_selection.json" in text and "SliceThickness<=5" in text


def test_usage_errors_exit_2(infer_bundle, infer_scans, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _infer(infer_bundle, empty, tmp_path / "o1") == 2
    assert "no NIfTI files or DICOM series" in capsys.readouterr().err
    assert _infer(tmp_path / "nobundle", infer_scans, tmp_path / "o2") == 2
    assert "bundle folder not found" in capsys.readouterr().err
    assert (
        _infer(infer_bundle, infer_scans, tmp_path / "o3", "--checkpoint", str(tmp_path / "missing.pt")) == 2
    )
    assert "checkpoint not found" in capsys.readouterr().err
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    assert _infer(infer_bundle, infer_scans, tmp_path / "o4", "--checkpoint", str(junk)) == 2
    assert "weights_only=True" in capsys.readouterr().err
    assert _infer(infer_bundle, infer_scans, tmp_path / "o5", "--num-parts", "2", "--part-id", "2") == 2
    assert "--part-id" in capsys.readouterr().err


def test_parts_share_one_folder_and_merge(infer_bundle, infer_scans, tmp_path, capsys):
    out = tmp_path / "out"
    for k in range(2):
        assert _infer(infer_bundle, infer_scans, out, "--no-qc", "--num-parts", "2", "--part-id", str(k)) == 0
    parts = [_report(out, f"report.part-{k}-of-2.csv") for k in range(2)]
    ids = [set(p["scan_id"]) for p in parts]
    assert len(ids[0]) == 2 and len(ids[1]) == 1 and not ids[0] & ids[1]
    assert not (out / "report.csv").exists()
    assert main(["infer", "--merge-reports", str(out)]) == 0
    merged = _report(out)
    assert list(merged["scan_id"]) == sorted(ids[0] | ids[1])
    assert len(list(out.glob("*_seg.nii.gz"))) == 3
    assert main(["infer", "--merge-reports", str(tmp_path)]) == 2


def test_reference_manifest_adds_dice_and_split_selects_scans(infer_bundle, infer_scans, tmp_path, capsys):
    first = tmp_path / "first"
    assert _infer(infer_bundle, infer_scans, first, "--no-qc") == 0
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
            "image": [str(infer_scans / "ct_a.nii.gz"), str(infer_scans / "sub" / "ct_b.nii.gz")],
            "label": ["refs/a.nii.gz", ""],
            "split": ["test", "train"],
        }
    ).to_csv(manifest, index=False)
    capsys.readouterr()
    out = tmp_path / "out"
    assert (
        _infer(infer_bundle, infer_scans, out, "--no-qc", "--reference", str(manifest), "--split", "test")
        == 0
    )
    summary = capsys.readouterr().out
    assert "1 scans: 1 ok" in summary and "mean Dice 1.000 over 1 scans" in summary
    report = _report(out)
    assert list(report["scan_id"]) == ["ct_a"]  # only the test split
    assert report.loc[0, "dice_organ"] == pytest.approx(1.0)
    assert np.isnan(report.loc[0, "dice_lesion"])  # absent from both
    # a wrong reference gives Dice 0 for the predicted label
    pd.DataFrame(
        {
            "subject_id": ["a"],
            "image": [str(infer_scans / "ct_a.nii.gz")],
            "label": ["refs/b.nii.gz"],
            "split": ["test"],
        }
    ).to_csv(manifest, index=False)
    out2 = tmp_path / "out2"
    assert _infer(infer_bundle, infer_scans, out2, "--no-qc", "--reference", str(manifest)) == 0
    report = _report(out2).set_index("source")
    assert len(report) == 3  # no --split: every scan, Dice where a reference exists
    assert report.loc["ct_a.nii.gz", "dice_organ"] == pytest.approx(0.0)
    assert np.isnan(report.loc["sub/ct_b.nii.gz", "dice_organ"])


def test_set_overrides_config_ids_and_misfit_weights_are_a_usage_error(
    infer_bundle, infer_scans, tmp_path, capsys
):
    # --set goes through the same overrides; a network override that the weights do not fit is a usage error
    assert _infer(infer_bundle, infer_scans, tmp_path / "o", "--set", "network_def#widths=[4, 8]") == 2
    assert "weights do not fit" in capsys.readouterr().err


def _labels(out: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asanyarray(nib.load(str(p)).dataobj) for p in sorted(out.glob("*_seg.nii.gz"))}


def _fold_runs(infer_bundle: Path, root: Path) -> list[Path]:
    """Two training output folders ``root/fold0``, ``root/fold1`` holding copies of the bundle's
    checkpoint (so their ensemble must segment exactly as the single model)."""
    checkpoints = []
    for k in range(2):
        models = root / f"fold{k}" / "models"
        models.mkdir(parents=True)
        checkpoints.append(models / "model.pt")
        checkpoints[-1].write_bytes((infer_bundle / "models" / "model.pt").read_bytes())
    return checkpoints


def test_checkpoint_repeated_or_a_folder_segments_with_the_ensemble(
    infer_bundle, infer_scans, tmp_path, capsys
):
    a, b = _fold_runs(infer_bundle, tmp_path / "cv")
    assert _infer(infer_bundle, infer_scans, tmp_path / "single", "--no-qc") == 0
    capsys.readouterr()
    assert _infer(infer_bundle, infer_scans, tmp_path / "repeated", "--no-qc", "--checkpoint", str(a),
                  "--checkpoint", str(b)) == 0  # fmt: skip
    assert f"ensemble of 2 checkpoints: {a}, {b}" in capsys.readouterr().out
    assert _infer(infer_bundle, infer_scans, tmp_path / "folder", "--no-qc", "--checkpoint",
                  str(tmp_path / "cv")) == 0  # fmt: skip
    assert f"ensemble of 2 checkpoints: {a}, {b}" in capsys.readouterr().out
    single = _labels(tmp_path / "single")
    assert len(single) == 3 and any((v == 1).any() for v in single.values())
    for form in ("repeated", "folder"):
        got = _labels(tmp_path / form)
        assert got.keys() == single.keys()
        for name, labels in got.items():
            np.testing.assert_array_equal(labels, single[name])
    # members that cannot be averaged: exit 2, both named
    deep = tmp_path / "deep" / "models"
    deep.mkdir(parents=True)
    net = UNet(3, 1, 3, widths=(2, 4, 8))
    torch.save(net.state_dict(), deep / "model.pt")
    (deep / "network.json").write_text(json.dumps({"_target_": "unet_med.networks.UNet", **net.config}))
    assert _infer(infer_bundle, infer_scans, tmp_path / "bad", "--checkpoint", str(a), "--checkpoint",
                  str(deep / "model.pt")) == 2  # fmt: skip
    assert f"members {a} and {deep / 'model.pt'} have different shape arithmetic" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_plan_beside_the_checkpoint_is_reported_and_applied(infer_bundle, infer_scans, tmp_path, capsys):
    (checkpoint,) = _fold_runs(infer_bundle, tmp_path / "cv")[:1]
    # the plan renames the classes (an id inference.json defines); batch_size is training-only
    plan = {"class_names": ["bg", "liver", "tumour"], "batch_size": 2}
    (checkpoint.parent / "plan.json").write_text(json.dumps(plan))
    capsys.readouterr()
    code = _infer(infer_bundle, infer_scans, tmp_path / "out", "--no-qc", "--checkpoint", str(checkpoint))
    assert code == 0
    assert f"plan applied: {checkpoint.parent / 'plan.json'} (class_names)" in capsys.readouterr().out
    assert "voxels_liver" in _report(tmp_path / "out").columns
    # --set wins over the plan
    assert _infer(infer_bundle, infer_scans, tmp_path / "set", "--no-qc", "--checkpoint", str(checkpoint),
                  "--set", 'class_names=["bg", "organ", "lesion"]') == 0  # fmt: skip
    assert "voxels_organ" in _report(tmp_path / "set").columns


def test_track_links_an_ensemble_to_its_first_members_training(infer_bundle, infer_scans, tmp_path, capsys):
    a, b = _fold_runs(infer_bundle, tmp_path / "cv")
    uri = sqlite_store_uri(tmp_path / "cv")
    training_ids = []
    for checkpoint in (a, b):  # two fold trainings sharing one store, each with its run record
        with one_shot_run(uri, experiment_name="tiny3d", run_name="training", tags={}) as run_id:
            pass
        experiment_id = mlflow.MlflowClient(uri).get_experiment_by_name("tiny3d").experiment_id
        run_dir = checkpoint.parent.parent
        write_run_record(run_dir, tracking_uri=uri, experiment_id=experiment_id, run_id=run_id)
        training_ids.append(run_id)
    capsys.readouterr()
    code = _infer(infer_bundle, infer_scans, tmp_path / "out", "--no-qc", "--track", "--checkpoint",
                  str(tmp_path / "cv"))  # fmt: skip
    assert code == 0, capsys.readouterr().err[-2000:]
    client = mlflow.MlflowClient(uri)
    inference = client.get_experiment_by_name("tiny3d-inference").experiment_id  # out of the training table
    (run,) = client.search_runs([inference], filter_string="tags.`unet_med.run_kind` = 'inference'")
    assert run.data.tags[TRAINING_RUN_TAG] == training_ids[0]
    assert run.data.params["infer.checkpoint"] == str(a.resolve())
    assert run.data.params["infer.ensemble_size"] == "2"
    assert json.loads(run.data.params["infer.ensemble_checkpoints"]) == [str(a.resolve()), str(b.resolve())]
    assert json.loads(run.data.params["infer.ensemble_training_runs"]) == training_ids


def test_select_rules_decide_every_series_and_the_report_says_why(
    infer_bundle, infer_scans, tmp_path, capsys
):
    from pydicom.dataset import Dataset

    scans = tmp_path / "scans"
    shutil.copytree(infer_scans, scans)
    rt = Dataset()  # an RT Structure Set written without the DICOM preamble
    rt.SOPClassUID, rt.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.481.3", pydicom.uid.generate_uid()
    rt.Modality, rt.SeriesInstanceUID = "RTSTRUCT", pydicom.uid.generate_uid()
    rt.save_as(scans / "series1" / "rtstruct.dcm", implicit_vr=True, little_endian=True)
    out = tmp_path / "out"
    rules = ["--select", "slices>=8", "--select", "Modality==CT"]
    assert _infer(infer_bundle, scans, out, "--no-qc", *rules) == 0
    assert "series selection (--select): slices>=8; Modality==CT; 1 selected, 2 not selected" in (
        capsys.readouterr().out
    )
    report = _report(out).fillna("").set_index("source")
    assert report.loc["series1", "status"] == "ok" and report.loc["series1", "selection"] == "selected"
    assert report.loc["series1", "kind"] == "dicom" and report.loc["series1", "study_id"].startswith("study_")
    assert report.loc["ct_a.nii.gz", "status"] == "skipped"
    assert report.loc["ct_a.nii.gz", "selection"] == (
        "not selected: Modality==CT (Modality: a NIfTI file or image has no DICOM header)"
    )
    assert report.loc["sub/ct_b.nii.gz", "selection"] == "not selected: slices>=8 (found 7)"
    assert report.loc["series1/rtstruct.dcm", "kind"] == "skipped-object"
    assert "not an image series (RT Structure Set" in report.loc["series1/rtstruct.dcm", "error"]
    assert report["scan_id"].is_unique and sorted(p.name for p in out.glob("*_seg.nii.gz")) == [
        f"{output_stem(report.loc['series1', 'scan_id'])}_seg.nii.gz"
    ]
    assert _infer(infer_bundle, scans, tmp_path / "o2", "--select", "SeriesDescription~/(unclosed/") == 2
    err = capsys.readouterr().err
    assert "--select rule 1 'SeriesDescription~/(unclosed/'" in err and "at character 20" in err  # the "("


def test_statistics_columns_hold_hu_statistics_and_components_of_the_written_labels(
    infer_bundle, infer_scans, tmp_path, capsys
):
    from unet_med.data.discovery import discover_scans
    from unet_med.data.loading import load_scan
    from unet_med.inference.measurements import label_statistics, statistics_columns

    out = tmp_path / "out"
    assert _infer(infer_bundle, infer_scans, out, "--statistics", "--save-probabilities", "--no-qc") == 0
    report = _report(out).set_index("scan_id")
    labels = {0: "background", 1: "organ", 2: "lesion"}
    assert set(statistics_columns(labels)) <= set(report.columns)
    assert list(report.columns)[-len(STAGE_COLUMNS):] == STAGE_COLUMNS
    for scan in discover_scans(infer_scans).scans:
        row = report.loc[scan.scan_id]
        label_map = np.asanyarray(nib.load(out / f"{output_stem(scan.scan_id)}_seg.nii.gz").dataobj)
        expected = label_statistics(label_map, load_scan(scan)[0].numpy(), labels)
        assert row["components_organ"] == expected["components_organ"] >= 1
        assert row["intensity_mean_organ"] == pytest.approx(expected["intensity_mean_organ"], abs=1e-5)
        assert row["intensity_std_organ"] == pytest.approx(expected["intensity_std_organ"], abs=1e-5)
        assert row["intensity_mean_organ"] < -100  # HU of the bright ball (-200), not normalised [0, 1]
        assert (out / f"{output_stem(scan.scan_id)}_probabilities.nii.gz").is_file()
        assert all(row[c] > 0 for c in STAGE_COLUMNS[:5])
    with pytest.raises(SystemExit):
        main(["infer", "--help"])
    text = capsys.readouterr().out
    assert "--save-probabilities" in text and "--statistics" in text and "seconds_predict" in text


@pytest.mark.slow
def test_a_2d_batch_prints_a_progress_bar_and_a_summary_without_library_warnings(tmp_path):
    """What a person sees: no MONAI orientation warning for 2D scans, no nvImageCodec notice, no
    Orientationd FutureWarning (run as a user runs it, in a fresh process)."""
    import subprocess
    import sys

    from unet_med.data.demo import generate_demo_dataset
    from unet_med.networks import create_unet

    manifest = generate_demo_dataset(tmp_path / "demo", dims=2, n=3, size=40, format="dicom")
    checkpoint = tmp_path / "model.pt"
    torch.save(create_unet("paper", base_width=2, out_channels=3).state_dict(), checkpoint)
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "infer", "--bundle", str(root / "bundles" / "unet2d_paper"),
         "--checkpoint", str(checkpoint), "--set", "base_width=2", "--input", str(manifest.parent / "images"),
         "--output", str(tmp_path / "out"), "--dicom-seg"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].startswith("3 scans: 3 ok, 0 failed, 0 skipped")
    for noise in ("axcodes", "nvImageCodec", "FutureWarning", "Warning", "WARNING"):
        assert noise not in result.stderr + result.stdout, result.stderr[-3000:]
    assert "infer: 100%" in result.stderr  # the one progress bar


def test_rtstruct_for_dicom_inputs_reads_back_as_the_label_map(infer_bundle, infer_scans, tmp_path, capsys):
    from unet_med.dicom.rtstruct import read_rtstruct_masks
    from unet_med.dicom.series import series_files

    out = tmp_path / "out"
    assert _infer(infer_bundle, infer_scans, out, "--no-qc") == 0
    capsys.readouterr()
    # asking for RTSTRUCT later re-segments the DICOM series only (its RTSTRUCT is missing)
    assert _infer(infer_bundle, infer_scans, out, "--no-qc", "--rtstruct") == 0
    assert "3 scans: 1 ok, 0 failed, 2 skipped" in capsys.readouterr().out
    report = _report(out).set_index("source")
    stem = output_stem(report.loc["series1", "scan_id"])
    assert sorted(p.name for p in out.glob("*_rtstruct.dcm")) == [f"{stem}_rtstruct.dcm"]  # DICOM inputs only
    rt = pydicom.dcmread(out / f"{stem}_rtstruct.dcm")
    assert rt.Modality == "RTSTRUCT" and rt.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    study = rt.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    series = study.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == "1.2.826.0.1.3680043.8.498.1"
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["organ", "lesion"]  # the bundle's names
    masks = read_rtstruct_masks(out / f"{stem}_rtstruct.dcm", series_files([infer_scans / "series1"]))
    nifti = np.asanyarray(nib.load(str(out / f"{stem}_seg.nii.gz")).dataobj)
    assert int(report.loc["series1", "voxels_organ"]) == int(masks["organ"].sum()) > 0
    assert np.array_equal(masks["organ"], nifti == 1) and np.array_equal(masks["lesion"], nifti == 2)
    assert not any("SECRET" in p.name for p in out.iterdir())  # patient names never name files
    assert _infer(infer_bundle, infer_scans, out, "--no-qc", "--rtstruct") == 0
    assert "3 scans: 0 ok, 0 failed, 3 skipped" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["infer", "--help"])
    text = capsys.readouterr().out
    assert "--rtstruct" in text and "<scan_id>_rtstruct.dcm" in text


def test_no_cpu_tuning_gives_the_same_label_maps(infer_bundle, infer_scans, tmp_path):
    assert _infer(infer_bundle, infer_scans, tmp_path / "tuned", "--no-qc", "--device", "cpu") == 0
    plain_run = ("--no-qc", "--device", "cpu", "--no-cpu-tuning")
    assert _infer(infer_bundle, infer_scans, tmp_path / "plain", *plain_run) == 0
    tuned = sorted((tmp_path / "tuned").glob("*_seg.nii.gz"))
    assert len(tuned) == 3
    for path in tuned:
        plain = nib.load(str(tmp_path / "plain" / path.name))
        np.testing.assert_array_equal(np.asarray(nib.load(str(path)).dataobj), np.asarray(plain.dataobj))
