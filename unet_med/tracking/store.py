"""Where MLflow runs live: turning what a user types into a tracking URI, and checking that the
store answers before any work is done.

A tracking store is either an embedded SQLite file (``sqlite:///<folder>/mlflow.db``, no server
needed) or an MLflow tracking server (``http://127.0.0.1:5000``, or any database URI MLflow takes).
One policy for what a user may type:

* a URI with a scheme (``sqlite:///``, ``http(s)://``, ``postgresql://``, ...) is used as given;
* nothing (None, ``""``, ``"none"``, ``"null"``, ``"default"``) means the default store
  (:func:`default_tracking_uri`): ``$MLFLOW_TRACKING_URI`` when set, else one SQLite store in the
  working directory, ``./mlflow.db`` (artifacts in ``./mlartifacts``);
* ``file:`` URIs and plain paths are refused with a hint: MLflow 3 no longer serves the file
  store (it raises unless ``MLFLOW_ALLOW_FILE_STORE`` is set), and a path is ambiguous for a
  store that may not exist yet (a database file? a folder?).

Why one store per working directory rather than one per output folder: runs are compared inside
one store (the UI and ``unet-med runs compare`` show one store at a time), so two trainings a
user starts from the project folder with different ``--output_dir`` must land side by side. It is
also MLflow's own default (``mlflow.get_tracking_uri()`` is ``sqlite:///mlflow.db`` in MLflow 3),
so a plain ``mlflow ui`` started in that folder opens the same runs.

:func:`resolve_tracking_uri` applies it for runs that write (training, evaluation). Commands
that read runs (``unet-med runs compare``) take one more form, :func:`existing_store_uri`: a path
to an SQLite file or to a folder holding ``mlflow.db``. That is no longer ambiguous,
because the store must exist and can be looked at; it is a separate function so that a path
never silently creates a new store.

Two failure modes are worth catching before MLflow itself sees the URI:

* a SQLite path with a typo: MLflow would silently create a new, empty database there;
* an unreachable server: MLflow's HTTP client retries with exponential back-off for minutes
  before it gives up, so a short probe of the server's ``/health`` endpoint answers in seconds.

Many trainings share one SQLite store. MLflow creates and migrates a new SQLite database on
first use without any guard, so two processes opening a fresh store at the same time both fail
("Online migration expected to match one row ..."); :func:`prepare_store` serialises that first
open with a file lock, and :func:`get_or_create_experiment` survives two processes creating the
same experiment at once. After that, SQLite's own locking is enough for concurrent runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "SQLITE_STORE_NAME",
    "TrackingStoreError",
    "sqlite_store_uri",
    "default_tracking_uri",
    "resolve_tracking_uri",
    "existing_store_uri",
    "sqlite_store_path",
    "artifact_location_for",
    "check_tracking_store",
    "check_tracking_uri",
    "store_lock",
    "prepare_store",
    "get_or_create_experiment",
    "using_tracking_uri",
]

logger = logging.getLogger(__name__)

#: File name of the embedded store inside its folder (the working directory by default).
SQLITE_STORE_NAME = "mlflow.db"
#: Environment variable naming the default store (MLflow's own).
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
_DEFAULT_WORDS = ("", "none", "null", "default")


class TrackingStoreError(RuntimeError):
    """The tracking store named by a URI or path cannot be used (missing file, server down,
    unwritable folder, file store)."""


def sqlite_store_uri(folder: str | os.PathLike) -> str:
    """``sqlite:///<absolute folder>/mlflow.db``: the embedded store kept in ``folder``."""
    return "sqlite:///" + str(Path(folder).resolve() / SQLITE_STORE_NAME)


def default_tracking_uri(working_dir: str | os.PathLike | None = None) -> str:
    """The store a run uses when none is given: ``$MLFLOW_TRACKING_URI`` when set, else the
    embedded store of the working directory (``working_dir``, default the process's current
    folder): ``sqlite:///<working_dir>/mlflow.db``.

    Raises:
        TrackingStoreError: ``$MLFLOW_TRACKING_URI`` is a plain path or ``file:`` URI.
    """
    from_env = os.environ.get(TRACKING_URI_ENV, "").strip()
    if from_env:
        try:
            return _refuse_file_store(from_env)
        except TrackingStoreError as error:
            raise TrackingStoreError(f"${TRACKING_URI_ENV}: {error}") from None
    return sqlite_store_uri(working_dir if working_dir is not None else Path.cwd())


def _refuse_file_store(uri: str) -> str:
    """``uri`` when it has a scheme other than ``file:``; else the file-store error with the
    SQLite and server forms to use instead."""
    if uri.startswith("file:") or "://" not in uri:
        raise TrackingStoreError(
            f"tracking URI {uri!r} is a file path; MLflow 3 no longer supports the file store. "
            f"Use an SQLite store such as "
            f"'sqlite:///{Path(uri.removeprefix('file://')).resolve()}/{SQLITE_STORE_NAME}' "
            "or a server URI such as 'http://host:5000'."
        )
    return uri


def resolve_tracking_uri(tracking_uri: str | None, output_dir: str | os.PathLike | None = None) -> str:
    """The URI a run writes to: ``tracking_uri`` when given (and not empty/"none"), else
    :func:`default_tracking_uri` (``$MLFLOW_TRACKING_URI`` or ``./mlflow.db``).

    ``output_dir`` no longer chooses the store (runs of all output folders share the working
    directory's store, see the module docstring); it is accepted so that bundle configs written
    as ``resolve_tracking_uri(@tracking_uri, @output_dir)`` keep working.

    Raises:
        TrackingStoreError: ``tracking_uri`` is a plain path or a ``file:`` URI (see the module
            docstring for why).
    """
    if tracking_uri is None or str(tracking_uri).strip().lower() in _DEFAULT_WORDS:
        return default_tracking_uri()
    return _refuse_file_store(str(tracking_uri).strip())


def existing_store_uri(location: str | os.PathLike) -> str:
    """The URI of an existing store named the way users type it when reading runs: a URI (as
    :func:`resolve_tracking_uri` takes it), the path of an SQLite store file, or a folder holding
    ``mlflow.db`` (the folder trainings were started from). Paths become absolute ``sqlite:///`` URIs.

    Raises:
        TrackingStoreError: a ``file:`` URI, or a path that is neither an SQLite file nor a folder
            with one.
    """
    text = str(location)
    if "://" in text or text.startswith("file:"):
        return _refuse_file_store(text)
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
            f"no MLflow store at {path}: expected an SQLite file (e.g. ./{SQLITE_STORE_NAME}), "
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


def artifact_location_for(tracking_uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: for an SQLite store ``mlartifacts`` next to
    the database file (``./mlartifacts`` for the default store); for a server, the server
    decides (None)."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return (db.parent / "mlartifacts").resolve().as_uri()
    return None


def check_tracking_store(uri: str, *, timeout_s: float = 5.0, must_exist: bool = True) -> None:
    """Fail fast, with one clear message, when the store at ``uri`` cannot be reached; creates
    nothing (the reader's check).

    For ``http(s)://`` URIs, ``GET <uri>/health`` must get any HTTP answer within ``timeout_s``
    seconds (an authentication error still means the server is there). For ``sqlite:///`` URIs
    with ``must_exist`` the database file must exist (reading must not create an empty store).
    Other schemes (PostgreSQL, MySQL) are left to MLflow.

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
            f"with a path/URI like sqlite:///<project folder>/{SQLITE_STORE_NAME}"
        ) from error


def check_tracking_uri(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail fast, with a clear message, when a run cannot write to the store (the writer's check,
    run before the first epoch).

    For ``http(s)://`` the server's ``/health`` endpoint must answer within ``timeout_s``
    seconds; for ``sqlite:///`` the database folder must be creatable and writable and the
    store must open (it is created when new, see :func:`prepare_store`).

    Raises:
        TrackingStoreError: naming the URI, the cause and the ``--tracking_uri`` fix.
    """
    hint = (
        "pass --tracking_uri with a reachable store (default: $MLFLOW_TRACKING_URI, else "
        f"sqlite:///<working directory>/{SQLITE_STORE_NAME})"
    )
    if tracking_uri.startswith(("http://", "https://")):
        check_tracking_store(tracking_uri, timeout_s=timeout_s, must_exist=False)
        return
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=db.parent, prefix=".write-test-"):
                pass
        except OSError as err:
            raise TrackingStoreError(
                f"MLflow store {tracking_uri}: folder {db.parent} is not writable ({err}); {hint}"
            ) from err
    try:
        prepare_store(tracking_uri)
    except TrackingStoreError as err:
        raise TrackingStoreError(f"{err}; {hint}") from err


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
    another process creates it in between, that experiment is used.

    Every experiment it returns is tagged as a model-training experiment
    (:func:`unet_med.tracking.ui.mark_model_training`), so MLflow's UI opens it on the runs table;
    an experiment made by an older version of the project gets the tag on first use, one whose
    kind a user chose is left alone.
    """
    from mlflow.exceptions import MlflowException

    from unet_med.tracking.ui import experiment_tags, mark_model_training

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        mark_model_training(client, experiment)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location, tags=experiment_tags())
    except MlflowException as error:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        logger.debug("experiment %r was created concurrently (%s)", name, error.error_code)
        mark_model_training(client, experiment)
        return experiment.experiment_id


@contextlib.contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Make ``uri`` the process's MLflow tracking URI inside the block, restoring the previous
    setting (including "not set") afterwards; ``mlflow.search_runs`` and the fluent API
    (``mlflow.start_run``) read it. Process-wide state: not for two threads at once."""
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
