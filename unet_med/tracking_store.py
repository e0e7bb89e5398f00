"""Where MLflow runs live: turning what a user types into a tracking URI, and checking it answers.

A tracking store is either an embedded SQLite file (``sqlite:///<output_dir>/mlflow.db``, no
server needed) or an MLflow tracking server (``http://127.0.0.1:5000``). Two failure modes are
worth catching before MLflow itself sees the URI:

* a SQLite path with a typo: MLflow would silently create a new, empty database there;
* an unreachable server: MLflow's HTTP client retries with exponential back-off for minutes
  before it gives up, so a short probe of the server's ``/health`` endpoint answers in seconds.

Two trainings may share one SQLite store. MLflow creates and migrates a new SQLite database on
first use without any guard, so two processes opening a fresh store at the same time both fail
("Online migration expected to match one row ..."); :func:`prepare_store` serialises that first
open with a file lock, and :func:`get_or_create_experiment` survives two processes creating the
same experiment at once. After that, SQLite's own locking is enough for concurrent runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

#: File name of the embedded store inside an output folder (the bundles' default).
SQLITE_STORE_NAME = "mlflow.db"


class TrackingStoreError(RuntimeError):
    """The tracking store named by a URI or path cannot be used (missing file, server down)."""


def resolve_tracking_uri(location: str | Path) -> str:
    """Return a tracking URI for ``location``.

    ``location`` may be a URI (``sqlite:///...``, ``http(s)://...``, ``postgresql://...``,
    ``file:...``), a path to an SQLite store file, or a folder holding ``mlflow.db`` (a bundle's
    ``output_dir``). Paths become absolute ``sqlite:///`` URIs.

    Raises:
        TrackingStoreError: a path was given that is neither an SQLite file nor a folder with one.
    """
    text = str(location)
    if "://" in text or text.startswith("file:"):
        return text
    path = Path(text).expanduser()
    if path.is_dir():
        candidate = path / SQLITE_STORE_NAME
        if not candidate.is_file():
            raise TrackingStoreError(
                f"no MLflow store in folder {path}: expected {candidate} (an SQLite tracking store) "
                "or pass a tracking URI such as http://127.0.0.1:5000"
            )
        path = candidate
    elif not path.is_file():
        raise TrackingStoreError(
            f"no MLflow store at {path}: expected an SQLite file (e.g. <output_dir>/{SQLITE_STORE_NAME}), "
            "a folder holding one, or a tracking URI such as http://127.0.0.1:5000"
        )
    return f"sqlite:///{path.resolve()}"


def sqlite_store_path(uri: str) -> Path | None:
    """The database file of an ``sqlite:///`` URI (relative paths against the working folder),
    or ``None`` for other URIs and for in-memory SQLite."""
    if not uri.startswith("sqlite:///"):
        return None
    raw = uri.removeprefix("sqlite:///").split("?", 1)[0]
    if raw in ("", ":memory:"):
        return None
    return Path(raw) if raw.startswith("/") else Path.cwd() / raw


def check_tracking_store(uri: str, *, timeout_s: float = 5.0, must_exist: bool = True) -> None:
    """Fail fast, with one clear message, when the store at ``uri`` cannot be used.

    For ``http(s)://`` URIs, ``GET <uri>/health`` must get any HTTP answer within ``timeout_s``
    seconds (an authentication error still means the server is there). For ``sqlite:///`` URIs
    with ``must_exist`` the database file must exist (reading must not create an empty store).
    Other schemes (PostgreSQL, MySQL, ``file:``) are left to MLflow.

    Raises:
        TrackingStoreError: naming the URI and what went wrong.
    """
    database = sqlite_store_path(uri)
    if database is not None:
        if must_exist and not database.is_file():
            raise TrackingStoreError(
                f"no MLflow store at {uri}: the SQLite file {database} does not exist "
                "(check the path; training creates it on its first run)"
            )
        return
    if not uri.startswith(("http://", "https://")):
        return
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # the server answered; MLflow reports authentication or path problems itself
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingStoreError(
            f"cannot reach the MLflow tracking server at {uri} ({reason}) within {timeout_s:g} s; "
            "start one with `unet-med mlflow-server` (or `make mlflow`), or use the embedded store "
            f"with a path/URI like sqlite:///<output_dir>/{SQLITE_STORE_NAME}"
        ) from error


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that is free at the time of the call (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock (``fcntl.flock`` on ``<database>.lock``, next to the database file)
    for an ``sqlite:///`` store; a no-op for other stores, which do their own locking."""
    database = sqlite_store_path(uri)
    if database is None:
        yield
        return
    import fcntl

    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prepare_store(uri: str):
    """Open the store at ``uri`` once, creating or upgrading an SQLite database under
    :func:`store_lock`, and return an ``MlflowClient`` for it.

    Raises:
        TrackingStoreError: the store cannot be opened (message names the URI and the cause).
    """
    import mlflow

    try:
        with store_lock(uri):
            client = mlflow.MlflowClient(tracking_uri=uri)
            client.search_experiments(max_results=1)
    except Exception as error:  # MlflowException, SQLAlchemy and OS errors alike
        raise TrackingStoreError(f"MLflow store {uri} cannot be opened ({error})") from error
    return client


def get_or_create_experiment(client, name: str, artifact_location: str | None = None) -> str:
    """The id of experiment ``name``, created (with ``artifact_location``) when missing. When
    another process creates it in between, that experiment is used."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as error:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        logger.debug("experiment %r was created concurrently (%s)", name, error.error_code)
        return experiment.experiment_id


@contextlib.contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Make ``uri`` the process's MLflow tracking URI inside the block, restoring the previous
    setting (including "not set") afterwards; ``mlflow.search_runs`` and the fluent API read it."""
    import mlflow

    previous = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    previous_env = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)
        if previous_env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous_env
