"""unet_med.tracking.folds: the fold trainings of one cross-validation are child runs of one parent
run, found by a stable key, whose summary (per-fold and mean best Dice) follows the folds; and the
default store: trainings started from one folder with different output folders share it."""

from __future__ import annotations

import json

import mlflow
import pytest

from pipelines.cli import main
from unet_med.tracking.folds import (
    CV_GROUP_TAG,
    FOLD_TAG,
    PARENT_TAG,
    cv_group_key,
    find_or_create_cv_parent,
    update_cv_summary,
)
from unet_med.tracking.server import TrackingServer, free_loopback_port
from unet_med.tracking.store import get_or_create_experiment, prepare_store, sqlite_store_uri


def test_the_key_depends_on_exactly_what_makes_the_split():
    key = cv_group_key("unet2d_paper", "ab" * 32, 5, 0)
    assert key == cv_group_key("unet2d_paper", "ab" * 32, 5, 0) and len(key) == 16
    others = {
        cv_group_key("unet3d", "ab" * 32, 5, 0),
        cv_group_key("unet2d_paper", "cd" * 32, 5, 0),
        cv_group_key("unet2d_paper", "ab" * 32, 4, 0),
        cv_group_key("unet2d_paper", "ab" * 32, 5, 1),
    }
    assert key not in others and len(others) == 4


def test_parent_is_found_again_and_its_summary_follows_the_folds(tmp_path):
    uri = sqlite_store_uri(tmp_path)
    client = prepare_store(uri)
    experiment = get_or_create_experiment(client, "cv")
    key = cv_group_key("b", "ab" * 32, 2, 0)

    def parent():
        return find_or_create_cv_parent(
            client, uri, experiment, key=key, run_name="b-cv2", tags={"bundle.name": "b"},
            params={"train.num_folds": "2"},
        )

    parent_id = parent()
    assert parent() == parent_id  # the second fold finds it
    assert client.get_run(parent_id).data.tags[CV_GROUP_TAG] == key

    def fold_run(fold, dice, status):
        run = client.create_run(experiment, tags={PARENT_TAG: parent_id, FOLD_TAG: str(fold)})
        client.log_metric(run.info.run_id, "best_val_mean_dice", dice)
        client.set_terminated(run.info.run_id, status)

    fold_run(0, 0.6, "FINISHED")
    fold_run(1, 0.1, "FAILED")  # a fold that failed: its Dice counts, it is not done
    metrics = update_cv_summary(client, parent_id, num_folds=2)
    assert metrics["fold0_best_val_mean_dice"] == 0.6 and metrics["cv_folds_done"] == 1
    assert client.get_run(parent_id).info.status == "RUNNING"
    fold_run(1, 0.8, "FINISHED")  # its rerun: the better run of fold 1 counts
    metrics = update_cv_summary(client, parent_id, num_folds=2)
    run = client.get_run(parent_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["fold1_best_val_mean_dice"] == 0.8
    assert run.data.metrics["cv_mean_best_val_mean_dice"] == pytest.approx(0.7)
    assert run.data.metrics["cv_std_best_val_mean_dice"] == pytest.approx(0.1)
    assert run.data.tags["unet_med.cv_folds_done"] == "2/2"
    assert "fold 1: best validation mean Dice 0.8000" in run.data.tags["mlflow.note.content"]


@pytest.mark.slow
def test_fold_trainings_from_one_folder_share_its_store_under_one_parent_run(
    tmp_path, demo_manifest, start_training, capsys
):
    """Two folds of a 2-fold cross-validation trained at the same time from one working folder
    into two output folders, with no --tracking_uri: both land in the folder's mlflow.db, in one
    experiment, as children of one parent run holding per-fold and mean best Dice; `unet-med runs
    compare` (no --tracking-uri) lists both; a real `mlflow server` on that store serves the same."""
    project = tmp_path / "project"
    project.mkdir()
    manifest = demo_manifest(tmp_path / "data")
    folds = {"num_folds": "2", "fold_seed": "3", "epochs": "1"}
    trainings = [
        start_training(project / f"fold{k}", manifest, {**folds, "fold": str(k)}, cwd=project)
        for k in (0, 1)
    ]
    for training in trainings:
        training.finish(timeout_s=400)
    assert not (project / "fold0" / "mlflow.db").exists()
    uri = sqlite_store_uri(project)
    records = [json.loads((project / f"fold{k}" / "mlflow_run.json").read_text()) for k in (0, 1)]
    assert {r["tracking_uri"] for r in records} == {uri}
    assert records[0]["experiment_id"] == records[1]["experiment_id"]

    root = tmp_path / "served"
    with TrackingServer(
        backend_store_uri=uri, artifacts_destination=str(root), port=free_loopback_port(),
        log_path=tmp_path / "server.log",
    ) as server:
        client = mlflow.MlflowClient(server.url)
        experiment_id = records[0]["experiment_id"]
        runs = client.search_runs([experiment_id])
        (parent,) = [r for r in runs if r.data.tags.get("unet_med.run_kind") == "cross_validation"]
        children = sorted((r for r in runs if r is not parent), key=lambda r: r.data.tags[FOLD_TAG])
        assert [r.info.run_id for r in children] == [r["run_id"] for r in records]
        assert {r.data.tags[PARENT_TAG] for r in children} == {parent.info.run_id}
        assert parent.info.status == "FINISHED"  # both folds finished
        assert parent.data.params["train.num_folds"] == "2" and parent.data.params["train.fold_seed"] == "3"
        best = [r.data.metrics["best_val_mean_dice"] for r in children]
        assert [parent.data.metrics[f"fold{k}_best_val_mean_dice"] for k in (0, 1)] == best
        assert parent.data.metrics["cv_mean_best_val_mean_dice"] == pytest.approx(sum(best) / 2)
        # each fold's datasets are its own subsets: 5 pool cases split 3/2 or 2/3
        for child in children:
            inputs = child.inputs.dataset_inputs
            cases = {i.dataset.name: json.loads(i.dataset.profile)["cases"] for i in inputs}
            fold = child.data.tags[FOLD_TAG]
            assert sorted(cases) == [f"data/manifest [{s}, fold {fold} of 2]" for s in ("train", "val")]
            assert sum(cases.values()) == 5
            assert f"fold {fold} of 2" in child.data.tags["mlflow.note.content"]

    capsys.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(project)  # the default store of runs compare is the working folder's
        assert main(["runs", "compare", "--experiment", "unet2d_paper", "--no-plot"]) == 0
        out = capsys.readouterr().out
        assert all(r["run_id"][:8] in out for r in records) and parent.info.run_id[:8] not in out
        assert main(["runs", "compare", "--experiment", "unet2d_paper", "--no-plot", "--kind",
                     "cross_validation", "--metric", "cv_mean_best_val_mean_dice"]) == 0  # fmt: skip
        assert parent.info.run_id[:8] in capsys.readouterr().out
