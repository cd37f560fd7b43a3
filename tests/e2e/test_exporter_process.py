"""The model export process, seen from the sweep: it runs below training's priority and exits when told."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fashion_mlops.config import load_params
from fashion_mlops.tracking.exporter import NICENESS, start_exporter
from helpers import tiny_params, write_params


def test_the_export_process_runs_at_a_lower_priority_than_training_and_exits_when_the_sweep_is_done(
    sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Niceness +19 (capped at 19): it exports mostly in the CPU time training leaves."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri in other tests sets it
    params = load_params(write_params(tmp_path / "params.yaml", tiny_params(sample_dataset, tmp_path)))
    exporter = start_exporter(params)
    try:
        experiment_id = exporter.connected()
        niceness = os.getpriority(os.PRIO_PROCESS, exporter.process.pid)
        assert niceness == min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICENESS)
    finally:
        assert exporter.close() == {}
    assert not exporter.process.is_alive() and exporter.process.exitcode == 0
    assert experiment_id and (tmp_path / "mlflow.db").exists()


def test_no_export_process_starts_when_models_are_not_logged(sample_dataset: Path, tmp_path: Path) -> None:
    params = tiny_params(sample_dataset, tmp_path)
    params["tracking"]["log_models"] = False
    assert start_exporter(load_params(write_params(tmp_path / "params.yaml", params))) is None
