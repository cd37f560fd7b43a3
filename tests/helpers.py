"""What several test modules share: where the project and its virtualenv are, and tiny params for real runs."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
# the project's virtualenv (its `dvc`, `mlflow` and `fashion-mlops`), or the running interpreter's
VENV_BIN = REPO_ROOT / ".venv" / "bin" if (REPO_ROOT / ".venv" / "bin").is_dir() else Path(sys.executable).parent


def tiny_params(dataset: Path, workdir: Path, **overrides: Any) -> dict[str, Any]:
    """A params mapping for a fast real run on `dataset`; `overrides` maps 'section.key' to a value."""
    params: dict[str, Any] = {
        "data": {
            "manifest": str(dataset / "manifest.json"),
            "sources": [str(dataset)],
            "dir": str(workdir / "data" / "raw"),
            "val_size": 60,
            "subset": None,
        },
        "model": {"arch": "simple_cnn"},
        "train": {"epochs": 2, "seed": 7, "lr": 0.01, "batch_size": 32, "optimizer": "adam"},
        "sweep": {"grid": {"lr": [0.01, 0.003]}, "workers": 1, "resume": True},
        "tracking": {
            "mlflow_uri": f"sqlite:///{workdir / 'mlflow.db'}",
            "artifact_location": str(workdir / "mlruns"),
            "experiment": "test",
            "tensorboard_dir": str(workdir / "runs"),
            "histogram_every": 1,
            "log_models": True,
        },
        "registry": {"model_name": "test-cnn", "alias": "champion"},
        "evaluate": {"batch_size": 50, "tta_flip": False},
        "export": {"latency_calls": 20, "throughput_batches": 2},
    }
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        params[section][key] = value
    return params


def write_params(path: Path, params: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


# --- servers the tests start on 127.0.0.1 and stop by process group ------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
            if response.status == 200:
                return
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{url} did not answer:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.25)


def stop_group(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# --- the CLI under test ----------------------------------------------------------------------------------------


def cli_env() -> dict[str, str]:
    """The environment the CLI runs in under test: the venv on PATH, no tracking or Ray overrides, unbuffered."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_sweep(root: Path) -> subprocess.Popen[str]:
    """`fashion-mlops sweep` in `root`, in a session of its own (signals reach it and its children), output piped."""
    return subprocess.Popen(
        ["fashion-mlops", "sweep"],
        cwd=root,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
