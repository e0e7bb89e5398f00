"""BatchSegmenter, the batch-inference library: one scan at a time (as a watched inbox calls it),
a list with the background loader, ids that must not escape the output folder, and report rows
for what discovery set aside, probabilities in each scan's geometry, seconds per stage."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from unet_med.data.discovery import Scan, discover_scans
from unet_med.data.loading import load_scan
from unet_med.inference import BatchSegmenter, load_bundle
from unet_med.inference.outputs import PROBABILITIES_SUFFIX, output_stem
from unet_med.inference.prediction import PreparedScan


def _scan(scan_id, infer_scans, source) -> Scan:
    return Scan(scan_id=scan_id, kind="nifti", source=source, files=[infer_scans / source])


def test_segment_scan_writes_outputs_then_skips_the_finished_scan(infer_bundle, infer_scans, tmp_path):
    segmenter = BatchSegmenter.from_bundle(infer_bundle, qc=False)  # constructed once ...
    scan = _scan("a", infer_scans, "ct_a.nii.gz")
    row = segmenter.segment_scan(scan, tmp_path / "out")  # ... called per scan
    assert row["status"] == "ok" and row["error"] == "" and row["seconds"] > 0
    assert 0 < row["voxels_organ"] and row["volume_ml_organ"] > 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_seg.nii.gz"]
    again = segmenter.segment_scan(scan, tmp_path / "out")
    assert again["status"] == "skipped" and again["voxels_organ"] == row["voxels_organ"]
    missing = segmenter.segment_scan(
        Scan("gone", "nifti", "gone.nii.gz", [tmp_path / "gone.nii.gz"]), tmp_path
    )
    assert missing["status"] == "failed" and "gone.nii.gz" in missing["error"]


def test_scan_ids_cannot_write_outside_the_output_folder(infer_bundle, infer_scans, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    segmenter = BatchSegmenter(load_bundle(infer_bundle), qc=False)
    scan = _scan("../../escape", infer_scans, "ct_a.nii.gz")
    result = segmenter.segment_scans([scan], out, report_path=out / "report.csv", progress=False)
    assert result.rows[0]["status"] == "ok"
    assert [p.parent for p in out.rglob("*_seg.nii.gz")] == [out]
    assert not (tmp_path.parent / "escape_seg.nii.gz").exists()


def test_next_scan_loads_in_the_background_while_the_current_one_is_predicted(
    infer_bundle, infer_scans, tmp_path, monkeypatch
):
    events = []
    real_prepare, real_predict = BatchSegmenter.prepare, BatchSegmenter.predict

    def prepare(self, scan) -> PreparedScan:
        events.append(("load", scan.scan_id, threading.current_thread().name, time.perf_counter()))
        return real_prepare(self, scan)

    def predict(self, prepared, name) -> np.ndarray:
        events.append(("predict-start", name, threading.current_thread().name, time.perf_counter()))
        time.sleep(0.3)
        result = real_predict(self, prepared, name)
        events.append(("predict-end", name, threading.current_thread().name, time.perf_counter()))
        return result

    monkeypatch.setattr(BatchSegmenter, "prepare", prepare)
    monkeypatch.setattr(BatchSegmenter, "predict", predict)
    scans = [_scan("a", infer_scans, "ct_a.nii.gz"), _scan("b", infer_scans, "sub/ct_b.nii.gz")]
    out = tmp_path / "out"
    segmenter = BatchSegmenter(load_bundle(infer_bundle), qc=False)
    result = segmenter.segment_scans(scans, out, report_path=out / "r.csv", progress=False)
    assert [r["status"] for r in result.rows] == ["ok", "ok"]
    loads = [e for e in events if e[0] == "load"]
    assert all(e[2].startswith("scan-loader") for e in loads)  # never on the predicting thread
    first_end = next(e[3] for e in events if e[0] == "predict-end")
    assert loads[1][3] < first_end  # scan b was loading while scan a was predicted


def test_segment_folder_reports_set_aside_files_by_their_kind(infer_bundle, infer_scans, tmp_path):
    from unet_med.dicom.synthetic import write_dicom_series

    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "ct_a.nii.gz").write_bytes((infer_scans / "ct_a.nii.gz").read_bytes())
    (scans / "notes.txt").write_text("not a scan")  # no row
    (scans / "DICOMDIR").write_bytes(b"\0" * 200)  # skipped
    paths = write_dicom_series(np.zeros((6, 6, 4), np.int16), np.eye(4), scans / "gap")
    paths[1].unlink()  # a broken series: failed
    segmenter = BatchSegmenter.from_bundle(infer_bundle, qc=False)
    result = segmenter.segment_folder(scans, tmp_path / "out", progress=False)
    by_source = {r["source"]: r["status"] for r in result.rows}
    assert by_source == {"ct_a.nii.gz": "ok", "DICOMDIR": "skipped", "gap": "failed"}
    assert result.counts == {"ok": 1, "failed": 1, "skipped": 1}
    assert result.report_path == tmp_path / "out" / "report.csv" and result.report_path.is_file()


@pytest.fixture
def unfiltered_bundle(infer_bundle, tmp_path) -> Path:
    """The tiny bundle without its largest-component clean-up, so the label map is the argmax of
    the network's output (resampling, a foreground crop and the CT window still apply)."""
    root = tmp_path / "bundle"
    shutil.copytree(infer_bundle, root)
    path = root / "configs" / "inference.json"
    config = json.loads(path.read_text())
    config["postprocessing"]["largest_component"] = False
    path.write_text(json.dumps(config))
    return root


def test_probabilities_are_in_the_scans_geometry_sum_to_one_and_argmax_to_the_labels(
    unfiltered_bundle, infer_scans, tmp_path
):
    scans = discover_scans(infer_scans).scans  # two rotated anisotropic NIfTI files, one DICOM series
    out = tmp_path / "out"
    segmenter = BatchSegmenter(load_bundle(unfiltered_bundle), qc=False, save_probabilities=True)
    result = segmenter.segment_scans(scans, out, progress=False)
    assert [r["status"] for r in result.rows] == ["ok"] * 3
    for scan in scans:
        seg = nib.load(out / f"{output_stem(scan.scan_id)}_seg.nii.gz")
        probabilities = nib.load(out / f"{output_stem(scan.scan_id)}{PROBABILITIES_SUFFIX}")
        assert probabilities.shape == (*seg.shape, 3)  # (i, j, k, class)
        np.testing.assert_allclose(probabilities.affine, seg.affine, atol=1e-6)
        np.testing.assert_allclose(probabilities.affine, load_scan(scan).affine.numpy(), atol=1e-4)
        p = probabilities.get_fdata(dtype=np.float32)
        np.testing.assert_allclose(p.sum(-1), 1.0, atol=2e-3)  # float16 precision
        labels = np.asanyarray(seg.dataobj)
        assert 0 < (labels == 1).sum() < labels.size  # the bright ball, cropped margins background
        top2 = np.sort(p, axis=-1)[..., -2:]
        decided = top2[..., 1] - top2[..., 0] > 2e-3  # ties at float16 precision aside
        assert decided.mean() > 0.99
        np.testing.assert_array_equal(p.argmax(-1)[decided], labels[decided])


def test_rows_hold_positive_seconds_per_stage_and_a_finished_scan_needs_its_probabilities(
    infer_bundle, infer_scans, tmp_path
):
    scan = _scan("a", infer_scans, "ct_a.nii.gz")
    out = tmp_path / "out"
    row = BatchSegmenter(load_bundle(infer_bundle), qc=True).segment_scan(scan, out)
    assert row["status"] == "ok"
    stages = ["seconds_load", "seconds_preprocess", "seconds_predict", "seconds_postprocess", "seconds_write"]
    for column in stages:
        assert row[column] > 0, column
    assert 0 < row["seconds_write_qc"] < row["seconds_write"] and row["seconds_write_dicom_seg"] < 1e-3
    assert row["seconds_predict"] < row["seconds"]
    # done without probabilities: asking for them segments the scan again, then it is complete
    segmenter = BatchSegmenter(load_bundle(infer_bundle), qc=False, save_probabilities=True)
    assert segmenter.segment_scan(scan, out)["status"] == "ok"
    assert (out / f"a{PROBABILITIES_SUFFIX}").is_file()
    assert segmenter.segment_scan(scan, out)["status"] == "skipped"
