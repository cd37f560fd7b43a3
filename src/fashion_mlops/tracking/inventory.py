"""What the tracking store and the TensorBoard directory still hold: runs, logged models, event files, registry
versions. Each check returns None when the thing is there, else one phrase saying what is missing.

DVC tracks reports/, not the store: these checks tell when a report names something the store has lost (a fresh
clone, a deleted `mlflow.db`, `mlruns/` or `runs/`), so that the pipeline rebuilds it instead of trusting the report.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

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
    except OSError:
        names = set()
    return None if "MLmodel" in names else f"the files of model {model_uri} are gone"


def tensorboard_problem(log_dir: str | None) -> str | None:
    """None if `log_dir` holds TensorBoard event files."""
    if not log_dir:
        return "no TensorBoard directory"
    if not any(Path(log_dir).glob("events.out.tfevents.*")):
        return f"TensorBoard events in {log_dir} are gone"
    return None


def version_problem(name: str, version: int | str | None, alias: str | None = None) -> str | None:
    """None if version `version` of registered model `name` exists (and holds `alias`, if given)."""
    client = mlflow.MlflowClient()
    try:
        found = client.get_model_version(name, str(version))
    except MlflowException as error:
        if error.error_code in MISSING:
            return f"version {version} of registered model {name} is not in the store"
        raise
    if alias is not None and alias not in found.aliases:
        return f"version {version} of {name} does not hold @{alias}"
    return None
