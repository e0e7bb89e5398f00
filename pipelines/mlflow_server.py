"""``unet-med mlflow-server``: start an MLflow tracking server (UI + REST API) for the project.

By default it binds 127.0.0.1, keeps runs in an SQLite store and artifacts in a local folder,
both inside the project's output folder (``outputs/mlflow/mlflow.db``, ``outputs/mlflow/mlartifacts``),
and proxies artifact uploads (clients need no access to the artifact folder). A team server uses
the same flags with a PostgreSQL store and an object-store bucket, see docs/TRACKING.md. The
server itself is :class:`unet_med.tracking.server.TrackingServer`.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from unet_med.tracking.server import (  # standard library only: `unet-med --help` stays fast
    DEFAULT_PORT,
    TrackingServer,
    TrackingServerError,
    local_store_locations,
)

DEFAULT_OUTPUT_DIR = Path("outputs") / "mlflow"


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
    backend = args.backend_store_uri
    artifacts = args.artifacts_destination
    if backend is None or artifacts is None:
        default_backend, default_artifacts = local_store_locations(args.output_dir)
        backend = backend if backend is not None else default_backend
        artifacts = artifacts if artifacts is not None else default_artifacts
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
        print(f"MLflow tracking server: {url}  (Ctrl-C stops it)", flush=True)
        for line in _runs_table_lines(url):
            print(line, flush=True)
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


def _runs_table_lines(url: str) -> list[str]:
    """One line per experiment of the store with the URL of its runs table (MLflow's UI would
    otherwise open an experiment without the model-training tag on its GenAI view); a hint when
    the store has none yet. Reading the list is best effort: the server is up, the hint is not
    worth failing for."""
    from unet_med.tracking.ui import runs_table_url

    try:
        from mlflow.tracking import MlflowClient

        experiments = [e for e in MlflowClient(url).search_experiments() if e.name != "Default"]
    except Exception as error:  # noqa: BLE001 - any failure only loses the hint
        return [f"open {url} (experiments not listed: {error})"]
    if not experiments:
        return [f"open {url}; each training prints the URL of its experiment's runs table"]
    return [f"runs of {e.name!r}: {runs_table_url(url, e.experiment_id)}" for e in experiments]


def _exit_on_signal(signum, _frame) -> None:
    raise SystemExit(128 + signum)
