"""How MLflow's client behaves in every process of a stage, set once in the environment so spawned processes inherit it.

Set before MLflow is imported; a value the user already exported wins.
"""

from __future__ import annotations

import os

CLIENT_DEFAULTS = {
    # usage telemetry tries to reach the internet when each process starts and exits, which stalls where there is none
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # MLflow retries a failed request with exponential backoff for minutes by default while training goes on; with
    # these bounds a sweep notices a tracking server that went away within about a minute
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    # a progress bar per model download fills the stage logs with carriage returns
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def apply_client_defaults() -> None:
    """Put CLIENT_DEFAULTS into this process's environment, keeping what the user set."""
    for name, value in CLIENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
