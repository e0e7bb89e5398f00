"""``unet-med export`` then ``unet-med infer --bundle EXPORT_DIR``: the exported network (ONNX
Runtime, TorchScript) writes the same label maps and report volumes as the bundle in PyTorch."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipelines.cli import main


def _infer(bundle, scans, out, *extra: str) -> int:
    arguments = ["--bundle", str(bundle), "--input", str(scans), "--output", str(out), "--no-qc", *extra]
    return main(["infer", *arguments])


def _segmentations(out) -> dict[str, np.ndarray]:
    return {p.name: np.asanyarray(nib.load(str(p)).dataobj) for p in sorted(out.glob("*_seg.nii.gz"))}


@pytest.fixture(scope="module")
def pytorch_outputs(infer_bundle, infer_scans, tmp_path_factory):
    out = tmp_path_factory.mktemp("pytorch")
    assert _infer(infer_bundle, infer_scans, out) == 0
    return out


@pytest.mark.slow
def test_onnx_export_round_trip_segments_like_pytorch(
    infer_bundle, infer_scans, pytorch_outputs, tmp_path, capsys
):
    export_dir = tmp_path / "export"
    assert main(["export", "--bundle", str(infer_bundle), "--output", str(export_dir)]) == 0  # onnx
    printed = capsys.readouterr().out
    assert "legal input sizes: 18 + 2 * n voxels per spatial axis" in printed
    assert sorted(p.name for p in export_dir.iterdir()) == ["export.json", "model.onnx"]
    assert json.loads((export_dir / "export.json").read_text())["engine"] == "onnxruntime"

    out = tmp_path / "out"
    assert _infer(export_dir, infer_scans, out, "--engine", "onnxruntime") == 0
    assert "exported model:" in capsys.readouterr().out
    expected, got = _segmentations(pytorch_outputs), _segmentations(out)
    assert len(got) == 3 and got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    columns = ["scan_id", "status", "voxels_organ", "voxels_lesion", "volume_ml_organ"]
    report, reference = pd.read_csv(out / "report.csv"), pd.read_csv(pytorch_outputs / "report.csv")
    pd.testing.assert_frame_equal(report[columns], reference[columns])


@pytest.mark.slow
def test_torchscript_export_is_run_by_its_own_engine(infer_bundle, infer_scans, pytorch_outputs, tmp_path):
    export_dir = tmp_path / "export"
    command = ["export", "--bundle", str(infer_bundle), "--format", "torchscript", "--output"]
    command.append(str(export_dir))
    assert main(command) == 0
    out = tmp_path / "out"
    assert _infer(export_dir, infer_scans, out) == 0  # engine from export.json
    expected, got = _segmentations(pytorch_outputs), _segmentations(out)
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_engine_and_folder_must_match(infer_bundle, infer_scans, tmp_path, capsys):
    assert _infer(infer_bundle, infer_scans, tmp_path / "out", "--engine", "onnxruntime") == 2
    err = capsys.readouterr().err
    assert "--engine onnxruntime runs an exported model" in err and "unet-med export --bundle" in err
    assert main(["export", "--bundle", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x")]) == 2
    assert "bundle folder not found" in capsys.readouterr().err


def test_help_documents_the_legal_sizes_and_the_extra(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = capsys.readouterr().out
    assert "smallest + period * n" in text and "pip install 'unet-med[onnx]'" in text
    with pytest.raises(SystemExit):
        main(["infer", "--help"])
    assert "--engine" in capsys.readouterr().out
