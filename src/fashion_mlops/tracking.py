"""The sweep's MLflow side without torch: the parent run, tags, fingerprints, reuse of earlier runs, orphans.

It runs in the tracker process (see tracker_service.py), where `cell_run.CellRun` logs each grid cell's
child run; nothing here imports torch, so the tracker can answer the training process before torch loads.
"""

from __future__ import annotations

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
from mlflow.entities import Metric, Param, Run, RunStatus, RunTag

from fashion_mlops.config import Params, RunSpec
from fashion_mlops.manifest import Manifest
from fashion_mlops.results import EPOCH_KEYS, EpochResult
from fashion_mlops.store import connect, metric_batch
from fashion_mlops.tracker_messages import DatasetShape

TAG_FINGERPRINT = "fashion_mlops.fingerprint"
TAG_SWEEP = "fashion_mlops.sweep_run_id"
TAG_KIND = "fashion_mlops.kind"
TAG_TENSORBOARD = "tensorboard.dir"
TAG_FAILURE = "fashion_mlops.failure"
TAG_MODEL_URI = "fashion_mlops.model_uri"
TAG_REUSED_FROM = "fashion_mlops.reused_from"
TAG_HOST = "fashion_mlops.host"
TAG_PID = "fashion_mlops.pid"


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
            version("torch"),
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
    """The sweep's parent run, its experiment and the tags every child run carries."""

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

    @property
    def sweep_run_id(self) -> str:
        return self.info.sweep_run_id

    def fingerprint(self, spec: RunSpec) -> str:
        return run_fingerprint(spec, self.params, self.manifest.digest())

    def dataset(self, shape: DatasetShape) -> Any:
        """The training data as an MLflow dataset input: its shapes and dtypes, and the manifest's content digest.

        MLflow's schema and profile of a NumPy dataset read only shapes and dtypes, so zero-stride arrays of the
        training split's shapes describe it exactly without shipping 43 MB of pixels to this process.
        """
        if self._dataset is None:
            self._dataset = mlflow.data.from_numpy(
                features=np.broadcast_to(np.zeros((), dtype=shape.images_dtype), shape.images_shape),
                targets=np.broadcast_to(np.zeros((), dtype=shape.labels_dtype), shape.labels_shape),
                source=str(Path(self.params.data.dir).resolve()),
                name=self.manifest.name,
                digest=self.manifest.digest(),
            )
        return self._dataset

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
        self.end("FINISHED")

    def end(self, status: str, reason: str | None = None) -> None:
        """End the sweep's parent run with `status` (FINISHED, FAILED or KILLED), the reason as a tag.

        Its cell runs are ended by the tracker process, which holds every one it opened.
        """
        client = mlflow.MlflowClient()
        if reason:
            client.set_tag(self.sweep_run_id, TAG_FAILURE, reason[:5000])
        client.set_terminated(self.sweep_run_id, status)
