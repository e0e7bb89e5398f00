"""An MLflow tracking server (UI + REST API) as a child process: what ``unet-med mlflow-server``
runs and what the end-to-end tests start.

:class:`TrackingServer` runs ``mlflow server`` as a child process group: a bounded wait for
``/health``, always stopped (SIGTERM to the group, then SIGKILL), stopped too when the starting
process dies (Linux). Kept as our own class because MLflow has no library API to start its server
and wait for it; the command line is MLflow's own, passed through unchanged.

By default a server keeps runs in an SQLite store and artifacts in a local folder, both in one
folder (:func:`local_store_locations`), and proxies artifact uploads (clients need no access to
the artifact folder). A team server uses a PostgreSQL store and an object-store bucket instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from unet_med.tracking.store import sqlite_store_uri

__all__ = [
    "DEFAULT_PORT",
    "TrackingServer",
    "TrackingServerError",
    "local_store_locations",
    "port_in_use",
    "free_loopback_port",
]

DEFAULT_PORT = 5000


class TrackingServerError(RuntimeError):
    """The tracking server did not start (port taken, bad store URI, not ready in time)."""


class TrackingServer:
    """An ``mlflow server`` child process.

    Args:
        backend_store_uri: where runs, params and metrics go (``sqlite:///...``, ``postgresql://...``).
        artifacts_destination: where proxied artifacts go (a folder, ``s3://bucket/path``, ...).
        host: interface to bind; 127.0.0.1 keeps it on this machine.
        port: TCP port.
        workers: uvicorn worker processes.
        log_path: file receiving the server's output (``None``: inherit this process's streams).
        extra_args: more ``mlflow server`` flags, passed through unchanged.

    Use as a context manager (``with TrackingServer(...) as server: server.url``) or call
    :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        *,
        backend_store_uri: str,
        artifacts_destination: str,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        workers: int = 1,
        log_path: str | Path | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.backend_store_uri = backend_store_uri
        self.artifacts_destination = artifacts_destination
        self.host = host
        self.port = port
        self.workers = workers
        self.log_path = Path(log_path) if log_path is not None else None
        self.extra_args = tuple(extra_args)
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        """The URL clients use (``--tracking_uri``); a wildcard bind is reached through loopback."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def command(self) -> list[str]:
        """The ``mlflow server`` command line (the ``mlflow`` entry point of this interpreter)."""
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--backend-store-uri",
            self.backend_store_uri,
            "--artifacts-destination",
            self.artifacts_destination,
            *self.extra_args,
        ]

    def start(self, *, ready_timeout_s: float = 120.0) -> str:
        """Start the server and wait until ``GET /health`` answers, at most ``ready_timeout_s``
        seconds (a fresh SQLite store takes 10-20 s to create on a small machine). Returns the URL.

        Raises:
            TrackingServerError: the port is taken, the process exited, or it was not ready in time
                (the process is stopped before raising).
        """
        if self.process is not None:
            raise TrackingServerError(f"this server is already running at {self.url}")
        if port_in_use(self.host, self.port):
            raise TrackingServerError(
                f"port {self.port} on {self.host} is already in use; pass another --port "
                f"(or open {self.url} if it is a running MLflow server)"
            )
        env = dict(os.environ)
        # The server's job runner serves GenAI evaluation jobs the project does not use; it costs a
        # process and start-up time.
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
        output = open(self.log_path, "ab") if self.log_path is not None else None
        try:
            self.process = subprocess.Popen(
                self.command(),
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                start_new_session=True,  # its own process group: stop() ends uvicorn workers too
                preexec_fn=_stop_with_parent if sys.platform.startswith("linux") else None,
            )
        finally:
            if output is not None:
                output.close()
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                where = f"; its output is in {self.log_path}" if self.log_path else ""
                raise TrackingServerError(f"mlflow server exited with code {code} before it was ready{where}")
            if self.is_ready():
                return self.url
            if time.monotonic() > deadline:
                self.stop()
                raise TrackingServerError(
                    f"mlflow server at {self.url} was not ready within {ready_timeout_s:g} s (stopped it)"
                )
            time.sleep(0.25)

    def is_ready(self, timeout_s: float = 1.0) -> bool:
        """True when ``GET /health`` answers 200."""
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout_s) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, *, timeout_s: float = 15.0) -> None:
        """Stop the server's process group: SIGTERM, then SIGKILL after ``timeout_s`` seconds."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        # uvicorn workers share the group; make sure none is left behind
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        """Block until the server process exits; returns its exit code."""
        assert self.process is not None, "start() the server first"
        return self.process.wait()

    def __enter__(self) -> TrackingServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _stop_with_parent() -> None:
    """In the child before exec: ask Linux to send SIGTERM when the starting process dies, so a
    killed ``unet-med mlflow-server`` (or test run) does not leave the server behind."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def port_in_use(host: str, port: int) -> bool:
    """True when a TCP listener already accepts connections on ``host:port``."""
    target = "127.0.0.1" if host in ("0.0.0.0", "") else host
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((target, port)) == 0


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that is free at the time of the call (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def local_store_locations(folder: str | os.PathLike) -> tuple[str, str]:
    """The store of a server kept in ``folder`` (created when missing): the SQLite URI of
    ``<folder>/mlflow.db`` and the absolute path of the artifact folder ``<folder>/mlartifacts``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return sqlite_store_uri(folder), str((folder / "mlartifacts").resolve())
