"""The run logger: MLflow and TensorBoard behind one small interface, for a sweep and its runs.

`SweepTracker` owns the MLflow parent run (through the client API, so child runs can be started in
this process or in worker processes); `CellRun` is one grid cell's child run plus its TensorBoard
directory. `NullSweepTracker` / `NullCellRun` do nothing, for `tracking.enabled: false`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities import DatasetInput, InputTag, Metric, Param, Run, RunStatus, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from torch import nn

from fashion_mlops.config import Params, RunSpec
from fashion_mlops.datasets import Split
from fashion_mlops.engine import EpochResult
from fashion_mlops.manifest import Manifest
from fashion_mlops.store import connect, metric_batch
from fashion_mlops.tensorboard_log import TensorBoardRun

TAG_FINGERPRINT = "fashion_mlops.fingerprint"
TAG_SWEEP = "fashion_mlops.sweep_run_id"
TAG_KIND = "fashion_mlops.kind"
TAG_TENSORBOARD = "tensorboard.dir"
TAG_FAILURE = "fashion_mlops.failure"
TAG_MODEL_URI = "fashion_mlops.model_uri"
TAG_REUSED_FROM = "fashion_mlops.reused_from"
TAG_HOST = "fashion_mlops.host"
TAG_PID = "fashion_mlops.pid"
MODEL_NAME = "model"
EXAMPLE_BATCH = 4  # torch.export specialises a batch of one; four keeps the batch dimension dynamic
EPOCH_KEYS = tuple(k for k in EpochResult.__dataclass_fields__ if k != "epoch")


def git_commit() -> tuple[str | None, bool]:
    """(HEAD commit, whether tracked files have uncommitted changes), or (None, False) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, False
    return commit.strip(), bool(dirty.strip())


@functools.cache
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
    """Tags that tie a run to git, the DVC params file and this package's code."""
    commit, dirty = git_commit()
    tags = {
        "dvc.params_file": str(params_path),
        "dvc.params_sha256": hashlib.sha256(params_path.read_bytes()).hexdigest() if params_path.exists() else "",
        "fashion_mlops.version": version("fashion-mlops"),
        "fashion_mlops.code_version": code_version(),
    }
    if commit:
        tags |= {"mlflow.source.git.commit": commit, "git.dirty": str(dirty).lower()}
    return tags


def process_tags() -> dict[str, str]:
    """Which process owns a run, so a later sweep can tell a live run from one whose process died."""
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}


def reap_orphaned_runs(experiment_id: str) -> list[str]:
    """End as KILLED the RUNNING runs of this host whose process is gone (e.g. after SIGKILL or a power cut)."""
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    reaped = []
    runs = client.search_runs(
        [experiment_id], filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG_HOST}` = '{host}'"
    )
    for run in runs:
        pid = run.data.tags.get(TAG_PID, "")
        if pid.isdigit() and not _process_alive(int(pid)):
            client.set_tag(run.info.run_id, TAG_FAILURE, f"process {pid} on {host} died while the run was RUNNING")
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            reaped.append(run.info.run_id)
    return reaped


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


@dataclass(frozen=True)
class SweepInfo:
    """What a worker process needs to attach child runs to the sweep's parent run."""

    sweep_run_id: str
    experiment_id: str
    tags: dict[str, str]

    def cell_tags(self, fingerprint: str, tensorboard_dir: str) -> dict[str, str]:
        """The tags of one grid cell's child run of this sweep."""
        return self.tags | {
            TAG_KIND: "cell",
            TAG_SWEEP: self.sweep_run_id,
            TAG_FINGERPRINT: fingerprint,
            TAG_TENSORBOARD: tensorboard_dir,
            "mlflow.parentRunId": self.sweep_run_id,
        }


class CellRun:
    """One grid cell's MLflow child run and its TensorBoard directory.

    Everything goes through the client API with this run's id; only model logging makes the run
    MLflow's "active run", briefly, because `mlflow.pytorch.log_model` needs one.
    """

    def __init__(self, params: Params, spec: RunSpec, sweep: SweepInfo, name: str, fingerprint: str) -> None:
        self.params = params
        self.spec = spec
        self.client = mlflow.MlflowClient()
        log_dir = Path(params.tracking.tensorboard_dir) / sweep.sweep_run_id[:8] / name
        tags = sweep.cell_tags(fingerprint, str(log_dir)) | process_tags()
        self.run_id: str | None = self.client.create_run(sweep.experiment_id, run_name=name, tags=tags).info.run_id
        try:
            self.tensorboard = TensorBoardRun(log_dir, params.tracking.histogram_every)
        except BaseException as error:
            self.client.set_terminated(self.run_id, RunStatus.to_string(_status_for(error)))
            raise
        self.started = time.perf_counter()

    def log_start(self, model: nn.Module, train: Split, dataset: Any) -> None:
        params = self.spec.flat_params() | {
            "val_size": self.params.data.val_size,
            "subset": self.params.data.subset,
            "train_images": len(train),
        }
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        context = InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[context])])
        self.tensorboard.log_start(model, train.images[:64])

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        self.client.log_batch(self.run_id, metrics=metric_batch(values, step))

    def log_epoch(self, result: EpochResult, model: nn.Module) -> None:
        values = result.as_dict()
        self.log_metrics(values, step=values.pop("epoch"))
        self.tensorboard.log_epoch(result, model)

    def log_finish(self, model: nn.Module, history: list[EpochResult], example: torch.Tensor) -> str | None:
        """Final metrics, HParams and the model; returns the logged model's URI (None if models are off).

        Synchronous on purpose: torch.export switches oneDNN off process-wide while it traces, so exporting
        on a thread while the next cell trains would change that cell's numbers.
        """
        final = history[-1]
        summary = {"final_" + k: v for k, v in final.as_dict().items() if k not in ("epoch", "lr")}
        self.log_metrics(summary | {"run_duration_s": time.perf_counter() - self.started}, step=final.epoch)
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
        uri = log_model(self.run_id, model, example)
        self.client.set_tag(self.run_id, TAG_MODEL_URI, uri)
        return uri

    def end(self, status: int, reason: str | None = None) -> None:
        """Flush TensorBoard and end the run with `status` (and the reason as a tag)."""
        try:
            self.tensorboard.close()
        finally:
            if reason:
                self.client.set_tag(self.run_id, TAG_FAILURE, reason[:5000])
            self.client.set_terminated(self.run_id, RunStatus.to_string(status))


def _status_for(error: BaseException) -> int:
    return RunStatus.KILLED if isinstance(error, KeyboardInterrupt) else RunStatus.FAILED


def log_model(run_id: str, model: nn.Module, example_images: torch.Tensor) -> str:
    """Log a CPU copy of the model into `run_id` with MLflow (pt2 format), with signature and input example."""
    cpu_model = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).eval()
    example = (example_images[:EXAMPLE_BATCH].float() / 255.0).cpu().numpy().astype(np.float32)
    mlflow.start_run(run_id=run_id)
    try:
        return mlflow.pytorch.log_model(
            cpu_model,
            name=MODEL_NAME,
            input_example=example,
            serialization_format="pt2",
            pip_requirements=[f"torch=={version('torch')}", f"torchvision=={version('torchvision')}"],
            # MLflow would reload the saved model to replay the example as a serving request (~0.2 s a run);
            # the signature is already inferred from the example, and the tests load and serve the champion
            validate_serving_input=False,
        ).model_uri
    finally:
        mlflow.end_run()  # the model's run is momentarily FINISHED here; CellRun.end sets its final status


class NullCellRun:
    """A cell run that logs nothing (tracking.enabled: false)."""

    run_id = None

    def log_start(self, model: nn.Module, train: Split, dataset: Any) -> None: ...

    def log_epoch(self, result: EpochResult, model: nn.Module) -> None: ...

    def log_finish(self, model: nn.Module, history: list[EpochResult], example: torch.Tensor) -> None: ...

    def end(self, status: int, reason: str | None = None) -> None: ...


class SweepTracker:
    """The sweep's MLflow parent run, and the factory for its child runs."""

    def __init__(self, params: Params, manifest: Manifest, info: SweepInfo) -> None:
        self.params = params
        self.manifest = manifest
        self.info = info
        self._dataset = None

    @classmethod
    def start(cls, params: Params, params_path: Path, manifest: Manifest, run_params: dict[str, Any]) -> SweepTracker:
        experiment_id = connect(params)
        reap_orphaned_runs(experiment_id)
        tags = common_tags(params_path)
        client = mlflow.MlflowClient()
        parent = client.create_run(
            experiment_id,
            run_name=f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
            tags=tags | {TAG_KIND: "sweep"} | process_tags(),
        )
        client.log_batch(parent.info.run_id, params=[Param(k, str(v)) for k, v in run_params.items()])
        return cls(params, manifest, SweepInfo(parent.info.run_id, experiment_id, tags))

    @classmethod
    def attach(cls, params: Params, manifest: Manifest, info: SweepInfo) -> SweepTracker:
        """The same tracker in a worker process."""
        connect(params)
        return cls(params, manifest, info)

    @property
    def sweep_run_id(self) -> str:
        return self.info.sweep_run_id

    def fingerprint(self, spec: RunSpec) -> str:
        return run_fingerprint(spec, self.params, self.manifest.digest())

    def dataset(self, train: Split) -> Any:
        """The training data as an MLflow dataset input, with the manifest's content digest."""
        if self._dataset is None:
            self._dataset = mlflow.data.from_numpy(
                features=train.images.numpy(),
                targets=train.labels.numpy(),
                source=str(Path(self.params.data.dir).resolve()),
                name=self.manifest.name,
                digest=self.manifest.digest(),
            )
        return self._dataset

    def start_cell(self, spec: RunSpec, name: str) -> CellRun:
        return CellRun(self.params, spec, self.info, name, self.fingerprint(spec))

    def find_reusable(self, spec: RunSpec) -> EarlierRun | None:
        """The newest FINISHED run with the same fingerprint and a logged model, if resuming is on."""
        if not self.params.sweep.resume:
            return None
        runs = mlflow.MlflowClient().search_runs(
            [self.info.experiment_id],
            filter_string=f"tags.`{TAG_FINGERPRINT}` = '{self.fingerprint(spec)}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=5,
        )
        return next((EarlierRun(run) for run in runs if TAG_MODEL_URI in run.data.tags), None)

    def reuse(self, earlier: EarlierRun, spec: RunSpec, name: str) -> tuple[str, list[EpochResult], float]:
        """A FINISHED child run holding an earlier identical run's params, metrics and model link."""
        client = mlflow.MlflowClient()
        tags = self.info.cell_tags(self.fingerprint(spec), earlier.run.data.tags.get(TAG_TENSORBOARD, "")) | {
            TAG_REUSED_FROM: earlier.run_id,
            TAG_MODEL_URI: earlier.model_uri,
        }
        child = client.create_run(self.info.experiment_id, run_name=name, tags=tags)
        histories = {key: client.get_metric_history(earlier.run_id, key) for key in earlier.run.data.metrics}
        metrics = [Metric(m.key, m.value, m.timestamp, m.step) for series in histories.values() for m in series]
        params = [Param(k, v) for k, v in earlier.run.data.params.items()]
        for start in range(0, max(len(metrics), 1), 1000):
            client.log_batch(
                child.info.run_id, metrics=metrics[start : start + 1000], params=params if not start else []
            )
        client.set_terminated(child.info.run_id, RunStatus.to_string(RunStatus.FINISHED))
        series = {k: {m.step: m.value for m in histories.get(k, [])} for k in EPOCH_KEYS}
        history = [
            EpochResult(epoch=e, **{k: series[k][e] for k in EPOCH_KEYS}) for e in sorted(series["val_accuracy"])
        ]
        return child.info.run_id, history, earlier.run.data.metrics.get("run_duration_s", 0.0)

    def finish(self, metrics: dict[str, float], tags: dict[str, str], reports: Path) -> None:
        client = mlflow.MlflowClient()
        client.log_batch(
            self.sweep_run_id,
            metrics=metric_batch(metrics, step=0),
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        client.log_artifacts(self.sweep_run_id, str(reports), artifact_path="reports")
        self.end(RunStatus.FINISHED)

    def end(self, status: int, reason: str | None = None) -> None:
        """End the sweep run, and with it any of its cell runs still RUNNING (e.g. in a worker that was stopped)."""
        client = mlflow.MlflowClient()
        leftovers = client.search_runs(
            [self.info.experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`{TAG_SWEEP}` = '{self.sweep_run_id}'",
        )
        leftover_status = RunStatus.KILLED if status == RunStatus.KILLED else RunStatus.FAILED
        for run in leftovers:
            client.set_tag(run.info.run_id, TAG_FAILURE, f"still RUNNING when the sweep ended ({reason or 'finished'})")
            client.set_terminated(run.info.run_id, RunStatus.to_string(leftover_status))
        if reason:
            client.set_tag(self.sweep_run_id, TAG_FAILURE, reason[:5000])
        client.set_terminated(self.sweep_run_id, RunStatus.to_string(status))


class NullSweepTracker:
    """A sweep tracker that logs nothing (tracking.enabled: false)."""

    sweep_run_id = "untracked"
    info = None

    def dataset(self, train: Split) -> None: ...

    def start_cell(self, spec: RunSpec, name: str) -> NullCellRun:
        return NullCellRun()

    def find_reusable(self, spec: RunSpec) -> None: ...

    def finish(self, metrics: dict[str, float], tags: dict[str, str], reports: Path) -> None: ...

    def end(self, status: int, reason: str | None = None) -> None: ...
