"""How the project talks to MLflow: the SQLite busy timeout really in force, bounded HTTP retries, and what makes
two runs' fingerprints equal."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from sqlalchemy import text

from fashion_mlops.config import Params
from fashion_mlops.tracking import client_settings
from fashion_mlops.tracking.runs import run_fingerprint
from fashion_mlops.tracking.store import SQLITE_BUSY_TIMEOUT_MS, connect


def params_for(tmp_path: Path, **train) -> Params:
    return Params.model_validate(
        {
            "data": {"sources": [str(tmp_path)]},
            "train": {"device": "cpu", **train},
            "tracking": {
                "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
                "artifact_location": str(tmp_path / "mlruns"),
            },
        }
    )


def test_the_busy_timeout_in_force_inside_mlflows_sessions_is_ours(tmp_path: Path) -> None:
    """MLflow sets `PRAGMA busy_timeout = 20000` at the start of every session; ours must be what holds."""
    previous = mlflow.get_tracking_uri()
    try:
        connect(params_for(tmp_path))
        store = mlflow.tracking._tracking_service.utils._get_store()
        with store.ManagedSessionMaker() as session:
            in_force = session.execute(text("PRAGMA busy_timeout")).scalar()
    finally:
        mlflow.set_tracking_uri(previous)
    assert in_force == SQLITE_BUSY_TIMEOUT_MS


def test_http_retries_are_bounded_unless_the_user_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in client_settings.CLIENT_DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "99")
    client_settings.apply_client_defaults()

    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "99"


def test_the_fingerprint_covers_the_data_on_disk_and_the_resolved_thread_count(tmp_path: Path) -> None:
    params = params_for(tmp_path)
    (cell,) = params.cells()
    base = run_fingerprint(cell, params, "data-a", threads=2)

    assert run_fingerprint(cell, params, "data-a", threads=2) == base
    assert run_fingerprint(cell, params, "data-b", threads=2) != base
    assert run_fingerprint(cell, params, "data-a", threads=1) != base


def test_a_cells_own_thread_count_wins_over_the_sweeps(tmp_path: Path) -> None:
    params = params_for(tmp_path, threads=3)
    (cell,) = params.cells()

    assert run_fingerprint(cell, params, "d", threads=1) == run_fingerprint(cell, params, "d", threads=2)
