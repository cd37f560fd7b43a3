"""What several test modules share: where the project and its virtualenv are, and tiny params for real runs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

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
    }
    for dotted, value in overrides.items():
        section, key = dotted.split(".", 1)
        params[section][key] = value
    return params


def write_params(path: Path, params: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path
