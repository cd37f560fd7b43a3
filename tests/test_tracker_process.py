"""The tracker process, seen from the training side: it runs below training's priority."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import pytest

from conftest import tiny_params, write_params
from fashion_mlops.config import load_params
from fashion_mlops.tracker_client import start_tracker
from fashion_mlops.tracker_service import NICENESS


def test_the_tracker_process_runs_at_a_lower_priority_than_training_and_ends_the_sweep_it_was_given(
    sample_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Niceness +19 (capped at 19): it writes mostly in the CPU time training leaves."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri in other tests sets it
    params_path = write_params(tmp_path / "params.yaml", tiny_params(sample_dataset, tmp_path))
    params = load_params(params_path)
    tracker = start_tracker(params, params_path)
    try:
        ready = tracker.begin()
        niceness = os.getpriority(os.PRIO_PROCESS, tracker.process.pid)
        assert niceness == min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICENESS)
    finally:
        tracker.end("KILLED", "test over")
    assert not tracker.process.is_alive()
    run = mlflow.MlflowClient(params.tracking.mlflow_uri).get_run(ready.sweep_run_id)
    assert run.info.status == "KILLED"
