"""A real ``mlflow server`` on a free loopback port: start-up, logging over HTTP with proxied
artifacts, comparison through the server, clean stop; and the errors of ``unet-med mlflow-server``."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from pipelines.cli import main
from pipelines.mlflow_server import TrackingServer, TrackingServerError, port_in_use
from unet_med.tracking_store import free_loopback_port

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
    experiment = client.create_experiment("unet2d_paper")
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
        ["runs", "compare", "--tracking-uri", srv.url, "--experiment", "unet2d_paper", "--plot", str(png)]
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
