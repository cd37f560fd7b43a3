"""The run logger: MLflow and TensorBoard behind one small interface, for a sweep and its runs."""

from __future__ import annotations

import copy
import hashlib
import os
import subprocess
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric, Run, RunStatus
from mlflow.exceptions import MlflowException
from torch import nn

from fashion_mlops.config import Params, RunSpec
from fashion_mlops.datasets import Split
from fashion_mlops.engine import EpochResult
from fashion_mlops.tensorboard_log import TensorBoardRun

TAG_FINGERPRINT = "fashion_mlops.fingerprint"
TAG_SWEEP = "fashion_mlops.sweep_run_id"
TAG_KIND = "fashion_mlops.kind"
TAG_TENSORBOARD = "tensorboard.dir"
TAG_FAILURE = "fashion_mlops.failure"
TAG_MODEL_URI = "fashion_mlops.model_uri"
TAG_REUSED_FROM = "fashion_mlops.reused_from"
MODEL_NAME = "model"
EXAMPLE_BATCH = 4  # torch.export specialises a batch of one; four keeps the batch dimension dynamic


def tracking_uri(params: Params) -> str:
    """`MLFLOW_TRACKING_URI` wins over params, so a shared server can be used without editing params."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.mlflow_uri


def connect(params: Params) -> str:
    """Point MLflow at the store and make sure the experiment exists; returns its id."""
    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    name = params.tracking.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:"):
        location = Path(params.tracking.artifact_location).resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # another process created it first
        return client.get_experiment_by_name(name).experiment_id


def git_commit() -> tuple[str | None, bool]:
    """(HEAD commit, whether the work tree has uncommitted changes), or (None, False) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, False
    return commit.strip(), bool(dirty.strip())


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_version() -> str:
    """A digest of the package's own source, so a code change invalidates reused runs."""
    digest = hashlib.sha256()
    for source in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()[:16]


def run_fingerprint(spec: RunSpec, params: Params, data_digest: str) -> str:
    """What makes two runs' results equal: all run params, the data split, the data and the code."""
    identity = repr(
        (
            sorted(spec.flat_params().items()),
            params.data.val_size,
            params.data.subset,
            data_digest,
            code_version(),
            torch.__version__,
        )
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def common_tags(params_path: Path) -> dict[str, str]:
    """Tags that tie a run to git, DVC params and this package."""
    commit, dirty = git_commit()
    tags = {
        "dvc.params_file": str(params_path),
        "dvc.params_sha256": file_sha256(params_path) if params_path.exists() else "",
        "fashion_mlops.version": version("fashion-mlops"),
        "fashion_mlops.code_version": code_version(),
    }
    if commit:
        tags |= {"mlflow.source.git.commit": commit, "git.dirty": str(dirty).lower()}
    return tags


class RunLogger:
    """One grid cell's MLflow child run plus its TensorBoard directory."""

    def __init__(self, params: Params, spec: RunSpec, run_name: str, tensorboard_dir: Path) -> None:
        self.params = params
        self.spec = spec
        self.run_name = run_name
        self.tensorboard = TensorBoardRun(tensorboard_dir, params.tracking.histogram_every)
        self.run_id = mlflow.active_run().info.run_id
        self.started = time.perf_counter()

    def log_start(self, model: nn.Module, train: Split, dataset: Any) -> None:
        mlflow.log_params(
            self.spec.flat_params()
            | {
                "val_size": self.params.data.val_size,
                "subset": self.params.data.subset,
                "train_images": len(train),
            }
        )
        mlflow.log_input(dataset, context="training")
        self.tensorboard.log_start(model, train.images[:64])

    def log_epoch(self, result: EpochResult, model: nn.Module) -> None:
        values = result.as_dict()
        epoch = values.pop("epoch")
        mlflow.log_metrics(values, step=epoch, synchronous=False)
        self.tensorboard.log_epoch(result, model)

    def log_finish(self, model: nn.Module, history: list[EpochResult], example: torch.Tensor) -> str | None:
        """Final metrics, HParams and the model; returns the logged model's URI (None if models are off)."""
        final = history[-1]
        duration = time.perf_counter() - self.started
        summary = {"final_" + k: v for k, v in final.as_dict().items() if k not in ("epoch", "lr")}
        mlflow.log_metrics(summary | {"run_duration_s": duration}, synchronous=False)
        self.tensorboard.log_hparams(
            self.spec.swept or {"arch": self.spec.arch},
            {
                "accuracy": final.accuracy,
                "loss": final.loss,
                "val_accuracy": final.val_accuracy,
                "val_loss": final.val_loss,
            },
        )
        if not self.params.tracking.log_models:
            return None
        uri = log_model(model, example)
        mlflow.set_tag(TAG_MODEL_URI, uri)
        return uri

    def close(self) -> None:
        self.tensorboard.close()


def log_model(model: nn.Module, example_images: torch.Tensor) -> str:
    """Log a CPU copy of the model with MLflow (pt2 format: no pickles), signature and input example."""
    cpu_model = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).eval()
    example = (example_images[:EXAMPLE_BATCH].float() / 255.0).cpu().numpy().astype(np.float32)
    info = mlflow.pytorch.log_model(
        cpu_model,
        name=MODEL_NAME,
        input_example=example,
        serialization_format="pt2",
        pip_requirements=[f"torch=={version('torch')}", f"torchvision=={version('torchvision')}"],
    )
    return info.model_uri


def end_run(status: RunStatus | int, reason: str | None = None) -> None:
    """End the active MLflow run with a status (and the reason as a tag)."""
    if mlflow.active_run() is None:
        return
    if reason:
        mlflow.set_tag(TAG_FAILURE, reason[:5000])
    mlflow.end_run(status=RunStatus.to_string(status))


@dataclass(frozen=True)
class EarlierRun:
    """A finished run whose fingerprint matches a grid cell, so its results can be reused."""

    run: Run

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def model_uri(self) -> str | None:
        return self.run.data.tags.get(TAG_MODEL_URI)


def find_reusable_run(fingerprint: str) -> EarlierRun | None:
    """The newest FINISHED run in the active experiment with this fingerprint and a logged model."""
    experiment_id = mlflow.active_run().info.experiment_id
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{TAG_FINGERPRINT}` = '{fingerprint}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    for run in runs:
        if TAG_MODEL_URI in run.data.tags:
            return EarlierRun(run)
    return None


def history_of(earlier: EarlierRun) -> tuple[list[EpochResult], float]:
    """Per-epoch results and run duration of an earlier run, read back from MLflow."""
    client = mlflow.MlflowClient()
    keys = [k for k in EpochResult.__dataclass_fields__ if k != "epoch"]
    series = {k: {m.step: m.value for m in client.get_metric_history(earlier.run_id, k)} for k in keys}
    epochs = sorted(series["val_accuracy"])
    history = [EpochResult(epoch=e, **{k: series[k][e] for k in keys}) for e in epochs]
    return history, earlier.run.data.metrics.get("run_duration_s", 0.0)


def copy_run(earlier: EarlierRun, run_id: str) -> None:
    """Fill a new child run with an earlier identical run's params, metrics, model link and TensorBoard dir."""
    client = mlflow.MlflowClient()
    metrics = [
        Metric(m.key, m.value, m.timestamp, m.step)
        for key in earlier.run.data.metrics
        for m in client.get_metric_history(earlier.run_id, key)
    ]
    params = earlier.run.data.params
    mlflow.log_params(params)
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    mlflow.set_tags(
        {
            TAG_REUSED_FROM: earlier.run_id,
            TAG_MODEL_URI: earlier.model_uri,
            TAG_TENSORBOARD: earlier.run.data.tags.get(TAG_TENSORBOARD, ""),
        }
    )
