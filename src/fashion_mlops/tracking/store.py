"""Where MLflow writes: the tracking URI, a reachability check, and the experiment, created once."""

from __future__ import annotations

import contextlib
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from fashion_mlops.config import Params
from fashion_mlops.errors import TrackingUnavailable
from fashion_mlops.tracking import tags
from fashion_mlops.tracking.workspace import anchored_uri

REACHABILITY_TIMEOUT_S = 5.0
SQLITE_BUSY_TIMEOUT_MS = 60_000


def tracking_uri(params: Params) -> str:
    """`MLFLOW_TRACKING_URI` wins over params, so a shared server can be used without editing params. A relative
    SQLite path names the original repository's file in a DVC experiment's temporary copy (`workspace`)."""
    if env_uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return anchored_uri(env_uri, "MLFLOW_TRACKING_URI")
    return anchored_uri(params.tracking.mlflow_uri, "tracking.mlflow_uri")


def check_reachable(uri: str) -> None:
    """Fail fast, with one clear line, when an http(s) tracking server does not answer its health check."""
    if urlparse(uri).scheme not in ("http", "https"):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=REACHABILITY_TIMEOUT_S):  # noqa: S310
            return
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise TrackingUnavailable(
            f"tracking server {uri} is unreachable ({reason}); start it (mlflow server --host 127.0.0.1) "
            "or point tracking.mlflow_uri / MLFLOW_TRACKING_URI at a reachable one"
        ) from None


_gone: set[str] = set()


def server_gone(uri: str) -> bool:
    """Whether the tracking server at `uri` has stopped answering (asked once; a server found gone stays gone)."""
    if urlparse(uri).scheme not in ("http", "https"):
        return False
    if uri not in _gone:
        try:
            check_reachable(uri)
        except TrackingUnavailable:
            _gone.add(uri)
    return uri in _gone


def marked_gone() -> bool:
    """Whether this process found its tracking server gone: writes that only tidy up are skipped."""
    return bool(_gone)


def connect(params: Params) -> str:
    """Point MLflow at the store and make sure the experiment exists, marked as model training; returns its id."""
    uri = tracking_uri(params)
    check_reachable(uri)
    open_store(params)
    client = mlflow.MlflowClient()
    name = params.tracking.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = None
        if uri.startswith("sqlite:"):
            location = Path(params.tracking.artifact_location).resolve().as_uri()
        with contextlib.suppress(MlflowException):  # another process created it first
            client.create_experiment(name, artifact_location=location)
        experiment = client.get_experiment_by_name(name)
    # an experiment without a kind counts as GenAI development (traces, prompts) to MLflow 3
    if experiment.tags.get(tags.EXPERIMENT_KIND) != tags.MODEL_TRAINING:
        client.set_experiment_tag(experiment.experiment_id, tags.EXPERIMENT_KIND, tags.MODEL_TRAINING)
    return experiment.experiment_id


def open_store(params: Params) -> None:
    """Point this process's MLflow at the store (each process that writes runs does this once)."""
    uri = tracking_uri(params)
    if uri.startswith("sqlite:///"):
        Path(sqlite_path(uri)).parent.mkdir(parents=True, exist_ok=True)
        _wait_when_sqlite_is_busy()
        _create_tables_once(uri)
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)


def metric_batch(values: dict[str, float], step: int) -> list[Metric]:
    """MLflow metric entities for one `log_batch` call, timestamped now."""
    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in values.items()]


def sqlite_path(uri: str) -> Path:
    return Path(uri.removeprefix("sqlite:///").split("?", 1)[0])


def lock_path(uri: str) -> Path:
    """A lock file beside a SQLite store (or in the temp dir for a server) for read-compare-write sequences."""
    import hashlib
    import tempfile

    if uri.startswith("sqlite:///"):
        db = sqlite_path(uri)
        return db.with_name(db.name + ".lock")
    return Path(tempfile.gettempdir()) / f"fashion-mlops-{hashlib.sha256(uri.encode()).hexdigest()[:12]}.lock"


_tables_created: set[str] = set()


def _create_tables_once(uri: str) -> None:
    """The first process to open a new SQLite store creates its tables while the others wait.

    MLflow creates them, and runs its schema migrations, in every process that finds them missing: two sweeps
    started at once on a new file (`dvc queue start -j 2`) fail with "duplicate column" or "expected to match one
    row". Its lock is a separate file from `lock_path`'s, which may already be held by this process.
    """
    if uri in _tables_created:
        return
    from filelock import FileLock

    database = sqlite_path(uri)
    with FileLock(database.with_name(database.name + "-init.lock"), timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
        mlflow.MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    _tables_created.add(uri)


_busy_timeout_installed = False


BUSY_TIMEOUT_PRAGMA = f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}"


def _wait_when_sqlite_is_busy() -> None:
    """Every SQLite connection waits up to SQLITE_BUSY_TIMEOUT_MS for a concurrent writer instead of failing.

    MLflow sets its own busy timeout at the start of every session (a fixed `PRAGMA busy_timeout = ...`), which
    would override one set when the connection opens; so that statement is rewritten to ours as it is sent.
    """
    global _busy_timeout_installed
    if _busy_timeout_installed:
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _set_busy_timeout(dbapi_connection, connection_record) -> None:
        if type(dbapi_connection).__module__.startswith("sqlite3"):
            cursor = dbapi_connection.cursor()
            cursor.execute(BUSY_TIMEOUT_PRAGMA)
            cursor.close()

    @event.listens_for(Engine, "before_cursor_execute", retval=True)
    def _keep_busy_timeout(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().lower().startswith("pragma busy_timeout ="):
            return BUSY_TIMEOUT_PRAGMA, parameters
        return statement, parameters

    _busy_timeout_installed = True
