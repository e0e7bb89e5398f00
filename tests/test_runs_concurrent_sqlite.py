"""Two trainings started at the same time on one new SQLite store both end up complete."""

from __future__ import annotations

import pytest
from runs_training import demo_manifest, start_training

from pipelines.cli import main

pytestmark = pytest.mark.slow


def test_two_trainings_share_a_new_sqlite_store(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    manifest = demo_manifest(tmp_path / "data")
    store = tmp_path / "shared" / "mlflow.db"  # does not exist yet: both processes race to create it
    uri = f"sqlite:///{store}"
    trainings = [
        start_training(tmp_path / f"run{seed}", manifest, ["--tracking_uri", uri, "--seed", str(seed)])
        for seed in (1, 2)
    ]
    for training in trainings:
        training.finish(timeout_s=400)

    client = MlflowClient(uri)
    experiments = [e.name for e in client.search_experiments()]
    assert experiments.count("unet2d_paper") == 1  # created once, used by both
    runs = client.search_runs([client.get_experiment_by_name("unet2d_paper").experiment_id])
    assert sorted(run.data.params["train.seed"] for run in runs) == ["1", "2"]
    iterations = None
    for run in runs:
        assert run.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_mean_dice")] == [1, 2]
        losses = client.get_metric_history(run.info.run_id, "train_loss")
        iterations = iterations or len(losses)
        assert len(losses) == iterations >= 2  # no iteration lost to a locked database
        assert "best_val_mean_dice" in run.data.metrics and "epoch_time_s" in run.data.metrics
        assert "models/model.pt" in [f.path for f in client.list_artifacts(run.info.run_id, "models")]

    # the comparison reads the store from its folder, as users point it at an output folder
    capsys.readouterr()
    assert (
        main(
            [
                "runs",
                "compare",
                "--tracking-uri",
                str(store.parent),
                "--experiment",
                "unet2d_paper",
                "--metric",
                "train_loss",
                "--no-plot",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert all(run.info.run_id[:8] in out for run in runs)
    assert "params that differ: train.seed\n" in out  # nothing else differs between the two runs
