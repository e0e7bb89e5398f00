"""unet_med.tracking.models and ``unet-med infer --model``: a tiny training against a real loopback
``mlflow server`` logs its best model and registers it (``--register_model``); the logged model
segments like the checkpoint; ``infer --model models:/...`` segments a folder like ``--bundle
--checkpoint``; and the bad inputs: a store without a Model Registry, a version or model that does
not exist, a logged model whose ``network.json`` disagrees with its weights."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from pipelines.cli import main
from unet_med.tracking.server import TrackingServer, free_loopback_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
BUNDLE = REPO / "bundles" / "unet2d_paper"
NAME = "tiny2d"


def _server(root: Path, *extra: str) -> TrackingServer:
    root.mkdir(parents=True, exist_ok=True)
    return TrackingServer(
        backend_store_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifacts_destination=str(root / "mlartifacts"),
        port=free_loopback_port(),
        log_path=root / "server.log",
        extra_args=extra,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_manifest, start_training):
    """A loopback ``mlflow server`` and one tiny 2D training on it with ``--register_model tiny2d``."""
    root = tmp_path_factory.mktemp("models")
    manifest = demo_manifest(root / "data")
    with _server(root / "server") as server:
        training = start_training(
            root / "run", manifest, {"tracking_uri": server.url, "register_model": NAME}
        )
        training.finish(timeout_s=400)
        scans = root / "scans"
        scans.mkdir()
        for image in sorted((manifest.parent / "images").glob("*.nii.gz"))[:2]:
            shutil.copy(image, scans / image.name)
        record = json.loads((root / "run" / "mlflow_run.json").read_text())
        yield {"url": server.url, "run": root / "run", "run_id": record["run_id"], "scans": scans,
               "root": root}


def test_logged_model_is_weights_only_and_segments_like_the_checkpoint(trained):
    import mlflow

    from unet_med.inference.bundle_loading import load_bundle
    from unet_med.tracking.models import BUNDLE_ARTIFACT, segment_array
    from unet_med.tracking.store import using_tracking_uri

    client = mlflow.MlflowClient(trained["url"])
    run = client.get_run(trained["run_id"])
    model_uri = run.data.tags["unet_med.model_uri"]
    checkpoint = trained["run"] / "models" / "model.pt"
    with using_tracking_uri(trained["url"]):
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(trained["root"] / "dl")))
        model = mlflow.pyfunc.load_model(model_uri)
    # nothing pickled: the pyfunc is built from code, the weights are a state_dict beside network.json
    assert not list(local.rglob("*.pkl"))
    weights = torch.load(local / "artifacts" / BUNDLE_ARTIFACT / "models" / "model.pt", weights_only=True)
    saved = torch.load(checkpoint, weights_only=True)
    assert weights.keys() == saved.keys() and all(torch.equal(weights[k], saved[k]) for k in saved)
    for name in ("inference.json", "metadata.json", "training.json"):
        assert (local / "artifacts" / BUNDLE_ARTIFACT / "configs" / name).is_file()
    assert (local / "artifacts" / BUNDLE_ARTIFACT / "models" / "plan.json").is_file()
    requirements = (local / "requirements.txt").read_text().split()
    assert f"torch=={torch.__version__}" in requirements and f"mlflow=={mlflow.__version__}" in requirements
    assert model.metadata.signature.params.to_dict()[0]["name"] == "spacing"
    assert (local / "input_example.json").is_file()

    # the same small image through the registered pyfunc and through the checkpoint on disk
    scan = nib.load(sorted(trained["scans"].glob("*.nii.gz"))[0])
    image = np.asarray(scan.dataobj, dtype=np.float32)[None, :40, :36]
    spacing = [float(s) for s in scan.header.get_zooms()[:2]]
    from_registry = model.predict(image[None], params={"spacing": spacing})
    bundle = load_bundle(BUNDLE, checkpoint=checkpoint, device="cpu")
    from_checkpoint = segment_array(bundle, image, spacing)
    assert from_registry.shape == (1, 40, 36) and from_registry.dtype == np.uint8
    np.testing.assert_array_equal(from_registry[0], from_checkpoint)


def test_register_model_then_infer_with_models_uri_equals_the_checkpoint(trained, tmp_path, capsys):
    from unet_med.tracking.models import resolve_model_version

    url, scans = trained["url"], trained["scans"]
    checkpoint = trained["run"] / "models" / "model.pt"
    code = main(["infer", "--model", f"models:/{NAME}/1", "--tracking-uri", url, "--input", str(scans),
                 "--output", str(tmp_path / "registry"), "--no-qc"])
    assert code == 0, capsys.readouterr().err
    assert f"model models:/{NAME}/1 from {url}" in capsys.readouterr().out
    code = main(["infer", "--bundle", str(BUNDLE), "--checkpoint", str(checkpoint), "--input", str(scans),
                 "--output", str(tmp_path / "checkpoint"), "--no-qc"])
    assert code == 0, capsys.readouterr().err
    outputs = sorted((tmp_path / "checkpoint").glob("*_seg.nii.gz"))
    assert len(outputs) == 2
    for path in outputs:
        mine, theirs = nib.load(tmp_path / "registry" / path.name), nib.load(path)
        np.testing.assert_array_equal(np.asarray(mine.dataobj), np.asarray(theirs.dataobj))
        np.testing.assert_allclose(mine.affine, theirs.affine)
    # an alias names the same version
    import mlflow

    mlflow.MlflowClient(url, registry_uri=url).set_registered_model_alias(NAME, "champion", "1")
    assert resolve_model_version(f"models:/{NAME}@champion", url).version == "1"


def test_missing_version_or_model_names_the_store_and_what_exists(trained, tmp_path, capsys):
    url, scans = trained["url"], trained["scans"]
    args = ["--tracking-uri", url, "--input", str(scans), "--output", str(tmp_path / "out")]
    assert main(["infer", "--model", f"models:/{NAME}/9", *args]) == 2
    err = capsys.readouterr().err
    assert url in err and f"'{NAME}' has no version 9" in err and "versions: 1" in err
    assert main(["infer", "--model", "models:/X/9", *args]) == 2
    err = capsys.readouterr().err
    assert url in err and "no registered model 'X'" in err and NAME in err
    assert main(["infer", "--model", "runs:/abc/model", *args]) == 2
    assert "models:/NAME/VERSION" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_weights_that_disagree_with_network_json_are_not_registered(trained, tmp_path):
    import mlflow

    from unet_med.tracking.models import ModelRegistryError, log_bundle_model, register_bundle_model

    url = trained["url"]
    client = mlflow.MlflowClient(url, registry_uri=url)
    run = client.create_run(client.get_run(trained["run_id"]).info.experiment_id, run_name="tampered")
    models = tmp_path / "models"
    shutil.copytree(trained["run"] / "models", models)
    network = json.loads((models / "network.json").read_text())
    wider = {**network, "widths": [2 * w for w in network["widths"]]}
    (models / "network.json").write_text(json.dumps(wider))
    # refused before anything is logged
    with pytest.raises(ModelRegistryError, match="network.json disagrees with the weights in model.pt"):
        log_bundle_model(url, run.info.run_id, BUNDLE, models)
    # a logged model whose network.json was replaced afterwards is not registered
    (models / "network.json").write_text(json.dumps(network))
    logged = log_bundle_model(url, run.info.run_id, BUNDLE, models)
    tampered = tmp_path / "tampered"
    (tampered / "artifacts" / "bundle" / "models").mkdir(parents=True)
    (tampered / "artifacts" / "bundle" / "models" / "network.json").write_text(json.dumps(wider))
    client.log_model_artifacts(logged.model_id, str(tampered))
    with pytest.raises(ModelRegistryError, match=f"logged model {logged.model_uri}: network.json disagrees"):
        register_bundle_model(url, logged.model_uri, "tampered")
    assert [m.name for m in client.search_registered_models()] == [NAME]


def test_register_model_on_a_store_without_registry_fails_before_training(
    tmp_path, demo_manifest, start_training
):
    manifest = demo_manifest(tmp_path / "data")
    with _server(tmp_path / "server", "--registry-store-uri", "unsupported:///nowhere") as server:
        training = start_training(
            tmp_path / "run", manifest, {"tracking_uri": server.url, "register_model": NAME}
        )
        try:
            code = training.process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            training.process.kill()
            raise
    log = training.log.read_text(errors="replace")
    assert code != 0
    assert f"MLflow store {server.url} has no usable Model Registry" in log
    assert "unsupported:///nowhere" in log  # what the server is configured with
    assert not (tmp_path / "run" / "models" / "model.pt").exists()  # stopped before the first epoch


def test_model_needs_a_store_and_excludes_bundle_and_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = str(tmp_path / "out")
    args = ["infer", "--model", f"models:/{NAME}/1", "--input", str(tmp_path), "--output", out]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "needs the MLflow store it is registered in" in err and "MLFLOW_TRACKING_URI" in err
    assert main([*args, "--bundle", str(BUNDLE), "--checkpoint", "x.pt"]) == 2
    assert "drop --bundle, --checkpoint" in capsys.readouterr().err
    assert main([*args, "--tracking-uri", str(tmp_path / "nowhere")]) == 2
    assert f"no MLflow store at {tmp_path / 'nowhere'}" in capsys.readouterr().err
