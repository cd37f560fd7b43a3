"""What the tracking store and the TensorBoard directory still hold: runs, logged models, event files, registry
versions. Each check returns None when the thing is there, else one phrase saying what is missing.

DVC tracks reports/, not the store: these checks tell when a report names something the store has lost (a fresh
clone, a deleted `mlflow.db`, `mlruns/` or `runs/`), so that the pipeline rebuilds it instead of trusting the report.
"""

from __future__ import annotations

import socket
from pathlib import Path

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from fashion_mlops.errors import TrackingFailed
from fashion_mlops.tracking import tags

MISSING = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


def run_problem(run_id: str | None, status: str = "FINISHED") -> str | None:
    """None if run `run_id` exists, is not deleted and has `status`."""
    if not run_id:
        return "no run id"
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException as error:
        if error.error_code in MISSING:
            return f"run {run_id} is not in the store"
        raise
    if run.info.lifecycle_stage != "active":
        return f"run {run_id} was deleted"
    if run.info.status != status:
        return f"run {run_id} is {run.info.status}, not {status}"
    return None


def model_problem(model_uri: str | None) -> str | None:
    """None if the logged model at `model_uri` still has its files (an MLmodel file at least)."""
    if not model_uri:
        return "no logged model"
    try:
        names = {Path(item.path).name for item in mlflow.artifacts.list_artifacts(artifact_uri=model_uri)}
    except MlflowException as error:
        if error.error_code in MISSING:
            return f"model {model_uri} is not in the store"
        raise
    except OSError as error:  # a missing directory lists as empty: this is a disk or network error, not a loss
        raise TrackingFailed(f"cannot list the files of model {model_uri}: {error}") from None
    return None if "MLmodel" in names else f"the files of model {model_uri} are gone"


def events_problem(run: Run) -> str | None:
    """None if the run's TensorBoard events are there, or were written on another host (a shared tracking server
    holds runs from several machines; each keeps its own event files)."""
    if run.data.tags.get(tags.HOST, socket.gethostname()) != socket.gethostname():
        return None
    return tensorboard_problem(run.data.tags.get(tags.TENSORBOARD))


def tensorboard_problem(log_dir: str | None) -> str | None:
    """None if `log_dir` holds TensorBoard event files."""
    if not log_dir:
        return "no TensorBoard directory"
    if not any(Path(log_dir).glob("events.out.tfevents.*")):
        return f"TensorBoard events in {log_dir} are gone"
    return None


def version_problem(name: str, version: int | str | None, model_uri: str | None) -> str | None:
    """None if version `version` of registered model `name` exists and is the model at `model_uri`.

    Who holds the alias is not checked: a later evaluation may rightly have moved it.
    """
    client = mlflow.MlflowClient()
    try:
        found = client.get_model_version(name, str(version))
    except MlflowException as error:
        if error.error_code in MISSING:
            return f"version {version} of registered model {name} is not in the store"
        raise
    if found.tags.get("model_uri") != model_uri:
        return f"version {version} of {name} is another model than {model_uri}"
    return None
