"""unet_med.tracking.server and ``unet-med mlflow-server``: a real ``mlflow server`` on a free
loopback port: start-up, logging over HTTP with proxied artifacts, comparison through the server,
clean stop; and the errors of ``unet-med mlflow-server``."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pandas as pd
import pytest
from matplotlib.image import imread

from pipelines.cli import main
from unet_med.tracking.server import TrackingServer, TrackingServerError, free_loopback_port, port_in_use

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``unet-med mlflow-server`` in a subprocess for the module (SQLite store and artifact folder
    in a temp dir, a free loopback port); at the end SIGTERM must stop it, leaving nothing behind."""
    root = tmp_path_factory.mktemp("server")
    port = free_loopback_port()
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "mlflow-server",
            "--output-dir",
            str(root),
            "--port",
            str(port),
            "--workers",
            "1",
            "--ready-timeout",
            "120",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    # keep draining the server's output so it never blocks on a full pipe
    threading.Thread(target=lambda: [lines.put(line) for line in cli.stdout], daemon=True).start()
    url = None
    deadline = time.monotonic() + 150
    while url is None and time.monotonic() < deadline and cli.poll() is None:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if line.startswith("MLflow tracking server: "):
            url = line.split()[3]
    try:
        assert url == f"http://127.0.0.1:{port}", "unet-med mlflow-server did not report its URL in time"
        yield SimpleNamespace(url=url, port=port, root=root)
    finally:
        cli.send_signal(signal.SIGTERM)
        try:
            code = cli.wait(timeout=40)
        finally:
            if cli.poll() is None:
                os.killpg(cli.pid, signal.SIGKILL)
    assert code == 0
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "server still listening after SIGTERM"
    leftovers = subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True).stdout
    assert not leftovers.strip(), f"server processes left running: {leftovers}"


def test_server_binds_loopback_and_stores_runs_and_proxied_artifacts(server, tmp_path, capsys):
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    srv, root = server, server.root
    client = MlflowClient(srv.url)
    experiment = client.create_experiment("plain_api")
    run_ids = []
    for width, dice in ((8, [0.3, 0.5]), (16, [0.4, 0.8])):
        run = client.create_run(experiment, run_name=f"unet2d_paper-paper-w{width}")
        now = int(time.time() * 1000)
        client.log_batch(
            run.info.run_id,
            metrics=[Metric("val_mean_dice", v, now, e) for e, v in enumerate(dice)]
            + [Metric("best_val_mean_dice", max(dice), now, 0)],
            params=[Param("net.base_width", str(width)), Param("net.preset", "paper")],
        )
        client.log_dict(run.info.run_id, {"base_width": width}, "config/resolved_config.json")
        client.set_terminated(run.info.run_id)
        run_ids.append(run.info.run_id)

    # artifacts went through the server into its artifact folder, not into the client's cwd
    for run_id in run_ids:
        assert client.get_run(run_id).info.artifact_uri.startswith("mlflow-artifacts:")
        assert [f.path for f in client.list_artifacts(run_id, "config")] == ["config/resolved_config.json"]
        stored = list((root / "mlartifacts").glob(f"*/{run_id}/artifacts/config/resolved_config.json"))
        assert len(stored) == 1
    fetched = client.download_artifacts(run_ids[1], "config/resolved_config.json", str(tmp_path))
    assert json.loads(open(fetched).read()) == {"base_width": 16}

    png = tmp_path / "curves.png"
    capsys.readouterr()  # MLflow prints "View run ..." links when runs end
    code = main(
        ["runs", "compare", "--tracking-uri", srv.url, "--experiment", "plain_api", "--plot", str(png)]
    )
    out = capsys.readouterr().out
    assert code == 0 and png.stat().st_size > 0
    assert out.index(run_ids[1][:8]) < out.index(run_ids[0][:8])  # width 16 (0.8) before width 8 (0.5)


def test_second_server_on_a_taken_port_is_refused_clearly(server):
    srv, root = server, server.root
    assert port_in_use("127.0.0.1", srv.port)
    other = TrackingServer(
        backend_store_uri=f"sqlite:///{root / 'other.db'}",
        artifacts_destination=str(root / "a"),
        port=srv.port,
    )
    with pytest.raises(TrackingServerError, match=f"port {srv.port} on 127.0.0.1 is already in use"):
        other.start(ready_timeout_s=5)
    assert other.process is None


def test_server_that_exits_early_is_reported(tmp_path):
    assert TrackingServer(backend_store_uri="sqlite://", artifacts_destination="a").url.startswith(
        "http://127.0.0.1:"
    )
    # a backend URI MLflow cannot use makes `mlflow server` exit before it serves anything
    server = TrackingServer(
        backend_store_uri="notadb://nowhere",
        artifacts_destination=str(tmp_path / "a"),
        port=free_loopback_port(),
        log_path=tmp_path / "server.log",
    )
    with pytest.raises(TrackingServerError, match="exited with code"):
        server.start(ready_timeout_s=60)
    assert server.process is None


CONTRACT_PARAMS = {
    "net.preset",
    "net.base_width",
    "net.padding",
    "net.spatial_dims",
    "net.in_channels",
    "net.out_channels",
    "optim.name",
    "optim.lr",
    "optim.momentum",
    "loss.name",
    "data.manifest",
    "data.manifest_sha256",
    "data.patch_size",
    "data.input_patch_size",
    "train.epochs",
    "train.batch_size",
    "train.seed",
    "train.amp",
}
CONTRACT_EPOCH_METRICS = {
    "val_mean_dice",
    "best_val_mean_dice",
    "best_epoch",
    "epoch_time_s",
    "samples_per_s",
    "peak_memory_mb",
    "val_dice_cell",
    "val_dice_dense_cell",
}
CONTRACT_TAGS = {"bundle.name", "bundle.version", "net.preset", "git.commit", "host.device"}


def test_two_bundle_trainings_over_http_are_complete_and_compare(
    server, tmp_path, capsys, demo_manifest, start_training, has_colour, monkeypatch
):
    """Two tiny trainings of the 2D paper bundle with different widths and learning rates, at the same
    time, against the server; both runs carry the promised params, metrics, tags, artifacts, what the
    MLflow UI shows (model-training experiment, description, dataset inputs, system metrics), and
    ``unet-med runs compare`` lists them best first, draws both curves and prints the runs-table URL."""
    from mlflow.tracking import MlflowClient

    from unet_med.data.manifest import manifest_sha256

    # MLflow's own setting, inherited by the trainings: a sample a second, so tiny runs get some
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")
    manifest = demo_manifest(tmp_path / "data")
    settings = {"w4": {"base_width": "4", "lr": "0.01"}, "w8": {"base_width": "8", "lr": "0.05"}}
    trainings = {
        name: start_training(tmp_path / name, manifest, {"tracking_uri": server.url, **extra})
        for name, extra in settings.items()
    }
    for training in trainings.values():
        training.finish(timeout_s=400)

    client = MlflowClient(server.url)
    experiment = client.get_experiment_by_name("unet2d_paper")  # default experiment: the bundle name
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # UI: runs table
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    by_width = {run.data.params["net.base_width"]: run for run in runs}
    assert set(by_width) == {"4", "8"}
    assert {by_width["4"].data.params["optim.lr"], by_width["8"].data.params["optim.lr"]} == {"0.01", "0.05"}
    for run in runs:
        run_id = run.info.run_id
        assert run.info.status == "FINISHED"
        assert re.fullmatch(r"unet2d_paper-paper-\d{8}-\d{6}", run.info.run_name)
        assert CONTRACT_PARAMS <= set(run.data.params)
        assert any(key.startswith("aug.") for key in run.data.params)
        assert CONTRACT_EPOCH_METRICS | {"train_loss"} <= set(run.data.metrics)
        assert CONTRACT_TAGS <= set(run.data.tags) and run.data.tags["bundle.name"] == "unet2d_paper"
        assert [m.step for m in client.get_metric_history(run_id, "val_mean_dice")] == [1, 2]  # step = epoch
        loss_steps = [m.step for m in client.get_metric_history(run_id, "train_loss")]
        assert loss_steps == list(range(1, len(loss_steps) + 1)) and len(loss_steps) >= 2  # step = iteration
        # artifacts were proxied into the server's artifact folder
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        config = json.loads(
            open(
                client.download_artifacts(run_id, "config/resolved_config.json", str(tmp_path / run_id))
            ).read()
        )
        assert str(config["base_width"]) == run.data.params["net.base_width"]
        assert "models/model.pt" in [f.path for f in client.list_artifacts(run_id, "models")]
        assert list(server.root.glob(f"mlartifacts/*/{run_id}/artifacts/models/model.pt"))
        # the description, the dataset inputs (digest = the manifest's content hash), system metrics
        note = run.data.tags["mlflow.note.content"]
        best = run.data.metrics["best_val_mean_dice"]
        assert note.startswith("**unet2d_paper**, preset `paper`; data `data/manifest.csv` (train 4, val 1)")
        assert f"best validation mean Dice {best:.4f}" in note
        inputs = {
            {t.key: t.value for t in i.tags}["mlflow.data.context"]: i.dataset
            for i in run.inputs.dataset_inputs
        }
        assert {c: d.name for c, d in inputs.items()} == {
            "training": "data/manifest [train]", "validation": "data/manifest [val]",
        }
        for context, cases in (("training", 4), ("validation", 1)):
            assert inputs[context].digest == manifest_sha256(manifest)[:16]
            assert json.loads(inputs[context].source)["uri"] == str(manifest.resolve())
            assert json.loads(inputs[context].profile)["cases"] == cases
        system = client.get_metric_history(run_id, "system/cpu_utilization_percentage")
        assert system and all(0 <= m.value <= 100 * os.cpu_count() for m in system)
        assert "system/system_memory_usage_megabytes" in run.data.metrics

    capsys.readouterr()
    table_csv, png = tmp_path / "compare.csv", tmp_path / "compare.png"
    code = main(
        [
            "runs",
            "compare",
            "--tracking-uri",
            server.url,
            "--experiment",
            "unet2d_paper",
            "--csv",
            str(table_csv),
            "--plot",
            str(png),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    table = pd.read_csv(table_csv)
    assert set(table["run_id"]) == {run.info.run_id for run in runs}
    best = table["best_val_mean_dice"].tolist()
    assert best == sorted(best, reverse=True)
    positions = [out.index(run_id[:8]) for run_id in table["run_id"]]
    assert positions == sorted(positions)
    assert "net.base_width" in table.columns and "optim.lr" in table.columns
    assert "net.preset" not in table.columns  # the same in both runs
    image = imread(png)
    assert has_colour(image, "C0") and has_colour(image, "C1")
    runs_table = f"{server.url}/#/experiments/{experiment.experiment_id}/runs?workflowType=machine_learning"
    assert f"MLflow UI: open {runs_table}" in out


def test_team_server_uses_the_same_flags():
    """A shared server differs only by its store URIs (and host); they reach `mlflow server` verbatim."""
    server = TrackingServer(
        backend_store_uri="postgresql://mlflow@db.internal:5432/mlflow",
        artifacts_destination="s3://team-bucket/mlflow",
        extra_args=("--allowed-hosts", "mlflow.internal"),
    )
    command = server.command()
    assert command[command.index("--host") + 1] == "127.0.0.1"  # loopback unless asked otherwise
    assert command[command.index("--backend-store-uri") + 1] == "postgresql://mlflow@db.internal:5432/mlflow"
    assert command[command.index("--artifacts-destination") + 1] == "s3://team-bucket/mlflow"
    assert command[-2:] == ["--allowed-hosts", "mlflow.internal"]
    assert TrackingServer(
        backend_store_uri="x", artifacts_destination="y", host="0.0.0.0", port=5001
    ).url == ("http://127.0.0.1:5001")


def test_folds_creating_their_parent_at_once_on_a_server_end_under_one_parent(server):
    """No lock on a server: folds racing to create the cross-validation parent converge on the
    oldest one, and a fold whose parent lost moves to the survivor when it ends."""
    from mlflow.tracking import MlflowClient

    from unet_med.tracking.folds import canonical_cv_parent, find_or_create_cv_parent

    client = MlflowClient(server.url)
    experiment = client.create_experiment("cv_race")
    start = threading.Barrier(3)
    chosen: list[str] = []

    def fold() -> None:
        start.wait()
        chosen.append(find_or_create_cv_parent(
            MlflowClient(server.url), server.url, experiment, key="0123456789abcdef", run_name="cv",
            tags={}, params={"train.num_folds": "3"},
        ))  # fmt: skip

    threads = [threading.Thread(target=fold) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    kind = "tags.`unet_med.run_kind` = 'cross_validation'"
    (survivor,) = client.search_runs([experiment], filter_string=kind)
    assert len(chosen) == 3
    assert canonical_cv_parent(client, experiment, "0123456789abcdef") == survivor.info.run_id
    # a fold either got the survivor or a parent that was deleted (it moves to the survivor when it ends)
    for parent in chosen:
        assert parent == survivor.info.run_id or client.get_run(parent).info.lifecycle_stage == "deleted"
