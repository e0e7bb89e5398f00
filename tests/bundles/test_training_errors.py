"""Bad input stops a bundle before the first epoch with one clear message."""

import time
from pathlib import Path

import pytest
from monai.bundle import run

from unet_med.bundle import WORKFLOW_NAME
from unet_med.data.demo import generate_demo_dataset
from unet_med.tracking.server import free_loopback_port

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "bundles" / "unet2d_paper" / "configs"


def _messages(error: BaseException) -> str:
    texts = []
    while error is not None:
        texts.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(texts)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return generate_demo_dataset(tmp_path_factory.mktemp("demo"), dims=2, n=4, size=32)


def _train(out, manifest, config_file=str(CONFIGS / "training.json"), **overrides):
    settings = dict(base_width=2, patch_size=[4, 4], epochs=1, output_dir=str(out), manifest=str(manifest))
    settings.update(overrides)
    run(run_id="training", workflow_name=WORKFLOW_NAME, meta_file=str(CONFIGS / "metadata.json"),
        config_file=config_file, bundle_root=str(CONFIGS.parent), **settings)


def _fails(match, out, manifest, **kwargs):
    with pytest.raises(Exception) as info:
        _train(out, manifest, **kwargs)
    text = _messages(info.value)
    assert match in text, text[-2000:]
    assert not (Path(out) / "models").exists()  # nothing trained


def test_invalid_manifest_shows_the_validation_report(manifest, tmp_path):
    bad = Path(manifest).parent / "bad.csv"
    text = Path(manifest).read_text().replace("images/demo2d_000.nii.gz", "images/missing.nii.gz")
    bad.write_text(text)
    _fails("invalid manifest", tmp_path / "out", bad)
    _fails("missing.nii.gz", tmp_path / "out", bad)
    _fails("does not exist (pass --manifest", tmp_path / "out", tmp_path / "nope.csv")


def test_illegal_patch_size_names_the_nearest_legal_sizes(manifest, tmp_path):
    _fails("90 is not a legal output size, nearest legal 84 (below) and 100 (above)", tmp_path, manifest,
           patch_size=[90, 90])


def test_unknown_preset_and_unknown_override_list_the_choices(manifest, tmp_path):
    _fails("unknown U-Net preset 'papr'; choose one of ['cicek3d', 'keras', 'paper', 'vgg16']", tmp_path,
           manifest, preset="papr")
    _fails("unknown config id(s) ['epoch']", tmp_path, manifest, epoch=3)
    _fails("'epochs'", tmp_path, manifest, epoch=3)


def test_missing_bundle_file_is_named(manifest, tmp_path):
    missing = str(CONFIGS / "trainin.json")
    with pytest.raises(Exception) as info:
        _train(tmp_path, manifest, config_file=missing)
    assert "trainin.json" in _messages(info.value)
    with pytest.raises(Exception) as info:
        run(run_id="evaluating", workflow_name=WORKFLOW_NAME, meta_file=str(CONFIGS / "metadata.json"),
            config_file=[str(CONFIGS / "training.json"), str(CONFIGS / "evaluate.json")],
            bundle_root=str(CONFIGS.parent), output_dir=str(tmp_path), manifest=str(manifest), base_width=2)
    assert f"{tmp_path}/models/model.pt does not exist (the trained weights" in _messages(info.value)


def test_unreachable_tracking_server_fails_in_seconds(manifest, tmp_path):
    start = time.monotonic()
    _fails("cannot reach the MLflow tracking server", tmp_path, manifest,
           tracking_uri=f"http://127.0.0.1:{free_loopback_port()}")
    assert time.monotonic() - start < 60
