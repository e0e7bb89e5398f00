"""unet_med.tracking.tracker.MLflowTracker: one run shared by trainer and evaluator with the
contract's names, continued on resume, the executed config logged from the file the bundle
workflow exports."""

import json
from pathlib import Path

import mlflow
import pytest
import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import MeanDice, ValidationHandler, from_engine
from monai.transforms import AsDiscreted, Compose
from torch.utils.data import DataLoader

from unet_med.tracking import MLflowTracker
from unet_med.tracking.store import default_tracking_uri


def _engines(tracker, epochs):
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 3, 3, padding=1)
    data = [{"image": torch.rand(1, 8, 8), "label": torch.randint(0, 3, (1, 8, 8))} for _ in range(3)]
    pred_label = from_engine(["pred", "label"])
    post = Compose([AsDiscreted(keys=["pred", "label"], argmax=[True, False], to_onehot=[3, 3])])
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=DataLoader(data[:2], batch_size=1),
        network=net,
        postprocessing=post,
        key_val_metric={"val_mean_dice": MeanDice(include_background=False, output_transform=pred_label)},
        additional_metrics={
            "val_dice_per_class": MeanDice(
                include_background=False, reduction="mean_batch", output_transform=pred_label
            )
        },
        val_handlers=[tracker],
    )
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=DataLoader(data, batch_size=1),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=torch.nn.CrossEntropyLoss(),
        prepare_batch=lambda batch, device, non_blocking, **kw: (batch["image"], batch["label"][:, 0]),
        decollate=False,
        train_handlers=[ValidationHandler(1, evaluator), tracker],
    )
    return trainer


_CONFIG = {"epochs": 2, "network_def": {"_target_": "unet_med.networks.create_unet"}}


def _tracker(out, resume=False, **config):
    return MLflowTracker(
        out,
        bundle_name="tiny_bundle",
        bundle_version="1.2.3",
        preset="paper",
        params={"net.preset": "paper", "optim.lr": 0.1, "data.patch_size": [84, 84]},
        class_names=["background", "cell", "dense_cell"],
        resume=resume,
        flush_every=2,
        system_metrics_interval_s=None,  # tested over a real server in test_server.py
        **(config or {"config": _CONFIG}),
    )


def _only_run(out):
    client = mlflow.MlflowClient(default_tracking_uri())  # the working directory's store
    (run,) = client.search_runs([client.get_experiment_by_name("tiny_bundle").experiment_id])
    return client, run


def _logged_config(run_id):
    return json.loads(  # artifacts next to the working directory's store
        (Path("mlartifacts") / run_id / "artifacts" / "config" / "resolved_config.json").read_text()
    )


def test_one_run_holds_params_tags_per_iteration_loss_and_per_epoch_dice(tmp_path):
    tracker = _tracker(tmp_path)
    _engines(tracker, epochs=2).run()

    client = mlflow.MlflowClient(default_tracking_uri())
    experiment = client.get_experiment_by_name("tiny_bundle")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    prefix = "tiny_bundle-paper-"
    assert run.info.run_name.startswith(prefix) and len(run.info.run_name) == len(prefix) + 15  # time stamp
    assert run.data.params == {"net.preset": "paper", "optim.lr": "0.1", "data.patch_size": "[84, 84]"}
    tags = run.data.tags
    assert (tags["bundle.name"], tags["bundle.version"], tags["net.preset"], tags["host.device"]) == (
        "tiny_bundle", "1.2.3", "paper", "cpu",
    )
    assert tags["git.commit"]
    loss_steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert loss_steps == [1, 2, 3, 4, 5, 6]
    for key in ("val_mean_dice", "val_dice_cell", "val_dice_dense_cell", "best_val_mean_dice", "best_epoch",
                "epoch_time_s", "samples_per_s", "peak_memory_mb"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    dice = [m.value for m in client.get_metric_history(run.info.run_id, "val_mean_dice")]
    assert run.data.metrics["best_val_mean_dice"] == pytest.approx(max(dice))
    config = _logged_config(run.info.run_id)
    assert config["network_def"]["_target_"] == "unet_med.networks.create_unet"
    assert json.loads((tmp_path / "mlflow_run.json").read_text())["run_id"] == run.info.run_id


def test_resume_continues_the_same_run(tmp_path):
    _engines(_tracker(tmp_path), epochs=1).run()
    resumed = _tracker(tmp_path, resume=True)
    _engines(resumed, epochs=1).run()
    client = mlflow.MlflowClient(default_tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name("tiny_bundle").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == resumed.run_id
    assert runs[0].data.tags["unet_med.resumed"] == "1"
    fresh = _tracker(tmp_path, resume=False)
    _engines(fresh, epochs=1).run()
    assert fresh.run_id != resumed.run_id


def test_the_executed_config_file_is_logged_as_resolved_config(tmp_path):
    """The bundle workflow exports the config it runs; the tracker logs that file's content under
    the artifact name users know (no call-stack lookup)."""
    executed = tmp_path / "exported" / "config_20250101_120000.json"
    executed.parent.mkdir()
    content = {"epochs": 1, "base_width": 4, "network_def": {"_target_": "unet_med.networks.create_unet"}}
    executed.write_text(json.dumps(content))
    out = tmp_path / "run"
    _engines(_tracker(out, config_file=str(executed)), epochs=1).run()
    _, run = _only_run(out)
    assert run.info.status == "FINISHED"
    assert _logged_config(run.info.run_id) == content


def test_without_a_config_the_run_has_no_config_artifact(tmp_path):
    _engines(_tracker(tmp_path, config_file=None), epochs=1).run()
    client, run = _only_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert client.list_artifacts(run.info.run_id, "config") == []


def test_a_missing_config_file_is_named_before_a_run_is_created(tmp_path):
    missing = tmp_path / "never_exported.json"
    with pytest.raises(FileNotFoundError, match="never_exported.json"):
        _engines(_tracker(tmp_path, config_file=missing), epochs=1).run()
    assert not (tmp_path / "mlflow_run.json").exists()


def test_resume_from_another_working_folder_continues_the_run_in_its_store(tmp_path, monkeypatch):
    """The default store follows the working folder; a resumed training follows its run record."""
    out = tmp_path / "run"
    (tmp_path / "first").mkdir()
    (tmp_path / "later").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    first = _tracker(out)
    _engines(first, epochs=1).run()
    monkeypatch.chdir(tmp_path / "later")
    resumed = _tracker(out, resume=True)
    _engines(resumed, epochs=1).run()
    assert resumed.run_id == first.run_id
    first_store = f"sqlite:///{(tmp_path / 'first').resolve()}/mlflow.db"
    assert resumed.tracking_uri == first.tracking_uri == first_store
    assert not (tmp_path / "later" / "mlflow.db").exists()


def test_a_run_shorter_than_one_sampling_interval_still_has_system_metrics(tmp_path):
    tracker = MLflowTracker(tmp_path, bundle_name="tiny_bundle", system_metrics_interval_s=60)
    tracker.start()
    tracker.finish()
    _, run = _only_run(tmp_path)
    assert 0 <= run.data.metrics["system/cpu_utilization_percentage"] <= 100
    assert run.data.metrics["system/system_memory_usage_megabytes"] > 0
