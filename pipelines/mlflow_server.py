"""``unet-med mlflow-server``: start an MLflow tracking server (UI + REST API) for the project.

By default it binds 127.0.0.1, keeps runs in an SQLite store and artifacts in a local folder,
both inside the project's output folder (``outputs/mlflow/mlflow.db``, ``outputs/mlflow/mlartifacts``),
and proxies artifact uploads (clients need no access to the artifact folder). A team server uses
the same flags with a PostgreSQL store and an object-store bucket, see docs/TRACKING.md.

:class:`TrackingServer` runs ``mlflow server`` as a child process group and is also what the
end-to-end tests use: bounded wait for ``/health``, always stopped (SIGTERM to the group, then
SIGKILL).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

DEFAULT_OUTPUT_DIR = Path("outputs") / "mlflow"
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


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "mlflow-server",
        help="start an MLflow tracking server (UI + REST API) on 127.0.0.1",
        description="Start `mlflow server` bound to 127.0.0.1 with an SQLite store and a local artifact "
        "folder inside the output folder, and print the URL to give training as --tracking_uri. "
        "Stops on Ctrl-C. A shared team server uses the same flags with "
        "--backend-store-uri postgresql://... --artifacts-destination s3://...",
    )
    parser.add_argument(
        "--output-dir",
        default=str(DEFAULT_OUTPUT_DIR),
        help=f"folder for mlflow.db and mlartifacts/ (default: {DEFAULT_OUTPUT_DIR})",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"TCP port (default: {DEFAULT_PORT})")
    parser.add_argument(
        "--backend-store-uri",
        default=None,
        help="run store (default: sqlite:///<output-dir>/mlflow.db); e.g. postgresql://user@db/mlflow",
    )
    parser.add_argument(
        "--artifacts-destination",
        default=None,
        help="artifact store (default: <output-dir>/mlartifacts); e.g. s3://bucket/mlflow",
    )
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (default: 2)")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the server to answer (default: 120)",
    )
    parser.add_argument(
        "mlflow_args",
        nargs=argparse.REMAINDER,
        metavar="-- MLFLOW_SERVER_FLAGS",
        help="further `mlflow server` flags after --, e.g. -- --allowed-hosts mlflow.example.org",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    output_dir = Path(args.output_dir)
    backend = args.backend_store_uri
    artifacts = args.artifacts_destination
    if backend is None or artifacts is None:
        output_dir.mkdir(parents=True, exist_ok=True)
    if backend is None:
        backend = f"sqlite:///{(output_dir / 'mlflow.db').resolve()}"
    if artifacts is None:
        artifacts = str((output_dir / "mlartifacts").resolve())
    server = TrackingServer(
        backend_store_uri=backend,
        artifacts_destination=artifacts,
        host=args.host,
        port=args.port,
        workers=args.workers,
        extra_args=tuple(a for a in args.mlflow_args if a != "--"),
    )
    # `kill <pid>` (SIGTERM) must stop the server too, not leave it running without its parent
    signal.signal(signal.SIGTERM, _exit_on_signal)
    print(f"starting mlflow server (store {backend}, artifacts {artifacts}) ...", flush=True)
    try:
        url = server.start(ready_timeout_s=args.ready_timeout)
        print(f"MLflow tracking server: {url}  (open it in a browser; Ctrl-C stops it)", flush=True)
        print(f"train against it:  python -m monai.bundle run training ... --tracking_uri {url}", flush=True)
        print(
            f"compare runs:      unet-med runs compare --tracking-uri {url} --experiment <bundle name>",
            flush=True,
        )
        code = server.wait()
    except TrackingServerError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 1
    except (KeyboardInterrupt, SystemExit):
        code = 0  # stopped on request
    finally:
        server.stop()
    return code


def _exit_on_signal(signum, _frame) -> None:
    raise SystemExit(128 + signum)
