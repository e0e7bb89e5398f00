"""unet_med.tracking.ui: the hints land on the runs table, experiments are model-training ones (a
user's own choice of kind kept), descriptions name bundle, preset, data and best Dice."""

from __future__ import annotations

import mlflow

from unet_med.tracking.store import get_or_create_experiment, prepare_store, sqlite_store_uri
from unet_med.tracking.ui import open_ui_hint, run_description


def test_hints_name_the_runs_table_of_a_server_or_the_mlflow_ui_command_of_a_store():
    table = "#/experiments/7/runs?workflowType=machine_learning"
    assert open_ui_hint("http://mlflow.internal:5000/", "7") == f"open http://mlflow.internal:5000/{table}"
    hint = open_ui_hint("sqlite:////proj/mlflow.db", "7", port=5001)
    command = "mlflow ui --backend-store-uri sqlite:////proj/mlflow.db --port 5001"
    assert hint == f"{command}  then open http://127.0.0.1:5001/{table}"


def test_experiments_are_model_training_ones_unless_a_user_chose_a_kind(tmp_path):
    uri = sqlite_store_uri(tmp_path)
    client = prepare_store(uri)
    created = get_or_create_experiment(client, "new")
    assert client.get_experiment(created).tags["mlflow.experimentKind"] == "custom_model_development"
    old = mlflow.MlflowClient(uri).create_experiment("made_before")  # an older version of the project
    chosen = mlflow.MlflowClient(uri).create_experiment(
        "genai", tags={"mlflow.experimentKind": "genai_development"}
    )
    assert get_or_create_experiment(client, "made_before") == old
    assert client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    get_or_create_experiment(client, "genai")
    assert client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def test_description_names_bundle_preset_data_fold_and_best_dice():
    note = run_description(
        bundle="unet2d_paper", preset="paper", manifest="/d/demo2d/manifest.csv",
        cases={"train": 3, "val": 2}, fold=1, num_folds=2, best_dice=0.81234, best_epoch=4,
    )
    assert note == (
        "**unet2d_paper**, preset `paper`; data `demo2d/manifest.csv` (train 3, val 2); fold 1 of 2; "
        "best validation mean Dice 0.8123 (epoch 4)"
    )
    assert run_description(bundle="b", preset="p", status="failed") == "**b**, preset `p`; failed"
