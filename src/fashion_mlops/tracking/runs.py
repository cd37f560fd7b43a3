"""A sweep in MLflow and TensorBoard: the parent run, one child run per grid cell, reuse of earlier identical runs,
and the runs that dead processes left RUNNING.

Runs are written by the process that trains them (the sweep process, or a worker), through the client API with
each run's id; only logging a model is handed to the export process (exporter.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from torch import nn

from fashion_mlops.config import Cell, Params
from fashion_mlops.data.manifest import Manifest
from fashion_mlops.data.splits import Split
from fashion_mlops.errors import TrackingFailed
from fashion_mlops.sources import code_version, git_commit
from fashion_mlops.tracking import NullSweep, ReusedCell, SweepTracking, exporter, inventory, store, tags
from fashion_mlops.tracking.store import connect, metric_batch, open_store
from fashion_mlops.tracking.tensorboard import TensorBoardRun
from fashion_mlops.train import EpochResult, resolved_settings

EXAMPLE_IMAGES = 4  # the logged model's input example: torch.export fixes the batch size of a one-image example
REASON_CHARS = 5000


def start_sweep(
    params: Params,
    params_path: Path,
    manifest: Manifest,
    n_cells: int,
    export: exporter.ModelExporter | None,
    data_digest: str,
    threads: int,
) -> SweepTracking:
    """Open the sweep's parent run (or track nothing, when tracking is off); `export` logs the models, if any.

    `data_digest` is the content digest of the data files on disk, `threads` the CPU threads a cell trains with
    unless its train.threads says otherwise: both are part of each run's fingerprint.
    """
    if not params.tracking.enabled:
        return NullSweep()
    if export is not None:
        export.connected()  # one process creates a new store's schema at a time
    experiment_id = connect(params)
    with tracking_writes():
        reap_orphaned_runs(experiment_id)
        common = common_tags(params_path)
        parent = mlflow.MlflowClient().create_run(
            experiment_id,
            run_name=f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
            tags=common | {tags.KIND: "sweep"} | owner_tags(),
        )
        run_params = sweep_params(params, n_cells)
        mlflow.MlflowClient().log_batch(parent.info.run_id, params=[Param(k, str(v)) for k, v in run_params.items()])
    runs = CellRunFactory(
        params,
        parent.info.run_id,
        experiment_id,
        common,
        manifest.name,
        data_digest,
        threads,
        export.inbox if export else None,
    )
    return SweepRun(runs, export)


@contextmanager
def tracking_writes() -> Iterator[None]:
    """A failed write to the store or the event files stops the sweep with one line, not a traceback.

    When the failure is a tracking server that stopped answering, the store is marked unreachable: the writes that
    would end runs on the way out are skipped instead of each waiting out MLflow's retries.
    """
    try:
        yield
    except (MlflowException, OSError) as error:
        if store.server_gone(mlflow.get_tracking_uri()):
            raise TrackingFailed(
                f"tracking server {mlflow.get_tracking_uri()} stopped answering; the sweep stopped. Its runs stay "
                "RUNNING there until the next sweep on this host ends them KILLED"
            ) from None
        raise TrackingFailed(f"a tracking write failed: {type(error).__name__}: {error}") from None


def run_fingerprint(cell: Cell, params: Params, data_digest: str, threads: int) -> str:
    """What makes two runs' results equal: all run params, the data split, the data on disk, the code, and how
    this machine resolves the settings that are left to it (device, precision, CPU threads)."""
    identity = repr(
        (
            sorted(cell.flat_params().items()),
            params.data.val_size,
            params.data.subset,
            data_digest,
            code_version(),
            version("torch"),
            sorted(resolved_settings(cell.train, cell.train.threads or threads).items()),
        )
    )
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def common_tags(params_path: Path) -> dict[str, str]:
    """Tags that tie a run to git, the DVC params file and this package's code."""
    commit, dirty = git_commit()
    found = {
        tags.PARAMS_FILE: str(params_path),
        tags.PARAMS_SHA256: hashlib.sha256(params_path.read_bytes()).hexdigest() if params_path.exists() else "",
        tags.VERSION: version("fashion-mlops"),
        tags.CODE_VERSION: code_version(),
    }
    if commit:
        found |= {tags.GIT_COMMIT: commit, tags.GIT_DIRTY: str(dirty).lower()}
    return found


def owner_tags() -> dict[str, str]:
    """Which process owns a run, so a later sweep can tell a live run from one whose process died."""
    return {tags.HOST: socket.gethostname(), tags.PID: str(os.getpid())}


def end_run(run_id: str, status: str, reason: str | None = None) -> None:
    """End a run with `status` (FINISHED, FAILED or KILLED), the reason as a tag (not on a server that is gone)."""
    if store.marked_gone():
        return
    client = mlflow.MlflowClient()
    if reason:
        client.set_tag(run_id, tags.FAILURE, reason[:REASON_CHARS])
    client.set_terminated(run_id, status)


def set_model_uri(run_id: str, model_uri: str) -> None:
    mlflow.MlflowClient().set_tag(run_id, tags.MODEL_URI, model_uri)


def reap_orphaned_runs(experiment_id: str) -> list[str]:
    """End as KILLED the RUNNING runs of this host whose process is gone (SIGKILL, a power cut)."""
    client = mlflow.MlflowClient()
    host = socket.gethostname()
    reaped = []
    filter_string = f"attributes.status = 'RUNNING' and tags.`{tags.HOST}` = '{host}'"
    for run in client.search_runs([experiment_id], filter_string=filter_string):
        pid = run.data.tags.get(tags.PID, "")
        if pid.isdigit() and not _process_alive(int(pid)):
            end_run(run.info.run_id, "KILLED", f"sweep process {pid} died on {host} while the run was RUNNING")
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
class CellRunFactory:
    """What every process that trains cells needs to open their child runs; plain data, so workers get it too."""

    params: Params
    sweep_run_id: str
    experiment_id: str
    tags: dict[str, str]
    dataset_name: str
    data_digest: str
    threads: int  # a cell's CPU threads unless its train.threads says otherwise
    exports: Any | None  # the export process's inbox; None when models are not logged

    def cell(self, cell: Cell) -> MlflowCellRun:
        open_store(self.params)
        return MlflowCellRun(self, cell)

    def fingerprint(self, cell: Cell) -> str:
        return run_fingerprint(cell, self.params, self.data_digest, self.threads)

    def cell_tags(self, cell: Cell, tensorboard_dir: str) -> dict[str, str]:
        """The tags of one grid cell's (or search trial's) child run of this sweep."""
        found = self.tags | {
            tags.KIND: "cell",
            tags.SWEEP: self.sweep_run_id,
            tags.FINGERPRINT: self.fingerprint(cell),
            tags.TENSORBOARD: tensorboard_dir,
            tags.PARENT: self.sweep_run_id,
        }
        if self.params.sweep.search != "grid":
            found[tags.TRIAL] = str(cell.index)
        return found


class MlflowCellRun:
    """One grid cell's child run in MLflow and its TensorBoard directory."""

    def __init__(self, factory: CellRunFactory, cell: Cell) -> None:
        self.factory = factory
        self.cell = cell
        self.client = mlflow.MlflowClient()
        self.run_id: str | None = None
        self.tensorboard: TensorBoardRun | None = None
        self.exporting = False

    def start(self, model: nn.Module, train: Split) -> None:
        params = self.factory.params
        log_dir = Path(params.tracking.tensorboard_dir) / self.factory.sweep_run_id[:8] / self.cell.name
        run_tags = self.factory.cell_tags(self.cell, str(log_dir)) | owner_tags()
        with tracking_writes():
            run = self.client.create_run(self.factory.experiment_id, run_name=self.cell.name, tags=run_tags)
            self.run_id = run.info.run_id
            self.tensorboard = TensorBoardRun(log_dir)
            run_params = self.cell.flat_params() | {
                "val_size": params.data.val_size,
                "subset": params.data.subset,
                "train_images": len(train),
            }
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in run_params.items()])
            self.client.log_inputs(self.run_id, datasets=[self._dataset(train)])
            self.tensorboard.log_start(model, train.images)

    def epoch(self, result: EpochResult, model: nn.Module) -> None:
        every = self.factory.params.tracking.histogram_every
        # histograms every `every` epochs and at the last one, so a run shorter than `every` has them too
        due = every and (result.epoch % every == 0 or result.epoch == self.cell.train.epochs)
        values = result.as_dict()
        with tracking_writes():
            self.client.log_batch(self.run_id, metrics=metric_batch(values, step=values.pop("epoch")))
            self.tensorboard.log_epoch(result, model if due else None)

    def finish(self, model: nn.Module, history: list[EpochResult], duration_s: float, val: Split) -> None:
        self._summarise(history, duration_s, "finished")
        if self.factory.exports is not None:
            exporter.request(self.factory.exports, self.run_id, self.cell.arch, model, val.images[:EXAMPLE_IMAGES])
            self.exporting = True

    def end(self, status: str, reason: str | None = None) -> None:
        if self.run_id is None:
            return
        with tracking_writes():
            try:
                if self.tensorboard is not None:
                    self.tensorboard.close()
            finally:
                if not (status == "FINISHED" and self.exporting):  # the export process ends it once logged
                    end_run(self.run_id, status, reason)

    def prune(self, history: list[EpochResult], duration_s: float, reason: str) -> None:
        if self.run_id is None:
            return
        if history:
            self._summarise(history, duration_s, "pruned")
        self.end("KILLED", reason)

    def _summarise(self, history: list[EpochResult], duration_s: float, trial_state: str) -> None:
        """Final metrics, the HParams entry and, in a sampled search, whether the trial finished or was pruned."""
        final = history[-1]
        summary = {"final_" + k: v for k, v in final.as_dict().items() if k not in ("epoch", "lr")}
        searched = self.factory.params.sweep.search != "grid"
        hparams = self.cell.swept or {"arch": self.cell.arch}
        with tracking_writes():
            self.client.log_batch(
                self.run_id,
                metrics=metric_batch(summary | {"run_duration_s": duration_s}, step=final.epoch),
                tags=[RunTag(tags.TRIAL_STATE, trial_state)] if searched else [],
            )
            hparam_metrics = ("accuracy", "loss", "val_accuracy", "val_loss")
            self.tensorboard.log_hparams(
                hparams | ({"trial_state": trial_state} if searched else {}),
                {k: getattr(final, k) for k in hparam_metrics},
            )

    def _dataset(self, train: Split) -> DatasetInput:
        """The training data as an MLflow dataset input, named and digested by the manifest."""
        with warnings.catch_warnings():  # a local path reads as two kinds of source to MLflow; either is right
            warnings.simplefilter("ignore", UserWarning)
            dataset = mlflow.data.from_numpy(
                features=train.images.numpy(),
                targets=train.labels.numpy(),
                source=str(Path(self.factory.params.data.dir).resolve()),
                name=self.factory.dataset_name,
                digest=self.factory.data_digest,
            )
        context = InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")
        return DatasetInput(dataset._to_mlflow_entity(), tags=[context])


class SweepRun:
    """The sweep's parent run, the export process, and the child runs of reused cells."""

    def __init__(self, runs: CellRunFactory, exporter_process: exporter.ModelExporter | None) -> None:
        self.runs = runs
        self.exporter = exporter_process
        self.client = mlflow.MlflowClient()

    @property
    def sweep_run_id(self) -> str:
        return self.runs.sweep_run_id

    def reuse(self, cells: list[Cell]) -> dict[int, ReusedCell]:
        if not self.runs.params.sweep.resume:
            return {}
        with tracking_writes():
            return {cell.index: reused for cell in cells if (reused := self._reuse(cell)) is not None}

    def _reuse(self, cell: Cell) -> ReusedCell | None:
        """A FINISHED child run copying the newest earlier run with the same fingerprint whose logged model and
        TensorBoard events are still there (a deleted `mlruns/` or `runs/` means training the cell again)."""
        earlier = self.client.search_runs(
            [self.runs.experiment_id],
            filter_string=f"tags.`{tags.FINGERPRINT}` = '{self.runs.fingerprint(cell)}' "
            "and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=5,
        )
        found = next((run for run in earlier if _intact(run, self.runs.params.tracking.log_models)), None)
        return None if found is None else self._copy(cell, found)

    def reuse_trial(self, cell: Cell, run_id: str) -> ReusedCell | None:
        with tracking_writes():
            try:
                found = self.client.get_run(run_id)
            except MlflowException:
                return None
            pruned = found.data.tags.get(tags.TRIAL_STATE) == "pruned"
            if found.info.status != ("KILLED" if pruned else "FINISHED"):
                return None
            if not pruned and not _intact(found, self.runs.params.tracking.log_models):
                return None
            return self._copy(cell, found)

    def _copy(self, cell: Cell, found: Run) -> ReusedCell:
        """A child run of this sweep copying `found`: its params, metrics, model and events, and its status."""
        model_uri = found.data.tags.get(tags.MODEL_URI)
        run_tags = self.runs.cell_tags(cell, found.data.tags.get(tags.TENSORBOARD, "")) | {
            tags.REUSED_FROM: found.info.run_id
        }
        for key in (tags.HOST, tags.TRIAL_STATE, tags.FAILURE):  # HOST: whose disk holds the events (no pid)
            if key in found.data.tags:
                run_tags[key] = found.data.tags[key]
        if model_uri:
            run_tags[tags.MODEL_URI] = model_uri
        child = self.client.create_run(self.runs.experiment_id, run_name=cell.name, tags=run_tags)
        history = self._copy_results(found, child.info.run_id)
        self.client.set_terminated(child.info.run_id, found.info.status)
        duration_s = found.data.metrics.get("run_duration_s", 0.0)
        return ReusedCell(child.info.run_id, history, duration_s, model_uri, found.info.run_id, found.info.status)

    def _copy_results(self, earlier: Run, run_id: str) -> list[EpochResult]:
        """Copy an earlier run's params and metric histories into `run_id`; returns its per-epoch results."""
        histories = {key: self.client.get_metric_history(earlier.info.run_id, key) for key in earlier.data.metrics}
        metrics = [Metric(m.key, m.value, m.timestamp, m.step) for series in histories.values() for m in series]
        params = [Param(k, v) for k, v in earlier.data.params.items()]
        for start in range(0, max(len(metrics), 1), 1000):
            self.client.log_batch(run_id, metrics=metrics[start : start + 1000], params=params if not start else [])
        keys = EpochResult.metric_names()
        series = {k: {m.step: m.value for m in histories.get(k, [])} for k in keys}
        return [EpochResult(epoch=e, **{k: series[k][e] for k in keys}) for e in sorted(series["val_accuracy"])]

    def check(self) -> None:
        if self.exporter is not None:
            self.exporter.check()

    def model_uris(self) -> dict[str, str]:
        return self.exporter.close() if self.exporter is not None else {}

    def finish(self, metrics: dict[str, float], summary_tags: dict[str, str], reports: Path) -> None:
        with tracking_writes():
            self.client.log_batch(
                self.sweep_run_id,
                metrics=metric_batch(metrics, step=0),
                tags=[RunTag(k, v) for k, v in summary_tags.items()],
            )
            self.client.log_artifacts(self.sweep_run_id, str(reports), artifact_path="reports")
            end_run(self.sweep_run_id, "FINISHED")

    def end(self, status: str, reason: str | None = None) -> None:
        """Let the export process log what it was sent, then end every run of the sweep still RUNNING.

        On a tracking server that is gone, none of that can be written: the export process is given a few seconds
        and the sweep stops at once.
        """
        gone = store.server_gone(mlflow.get_tracking_uri())
        try:
            if self.exporter is not None:
                with contextlib.suppress(TrackingFailed):  # the sweep already stops for a reason of its own
                    self.exporter.close(exporter.GONE_CLOSE_TIMEOUT_S if gone else exporter.CLOSE_TIMEOUT_S)
        finally:
            if not gone:
                self._end_open_runs(status, reason)

    def _end_open_runs(self, status: str, reason: str | None) -> None:
        with tracking_writes():
            open_cells = self.client.search_runs(
                [self.runs.experiment_id],
                filter_string=f"tags.`{tags.SWEEP}` = '{self.sweep_run_id}' and attributes.status = 'RUNNING'",
            )
            for run in open_cells:
                end_run(run.info.run_id, status, f"still RUNNING when the sweep ended ({reason})")
            end_run(self.sweep_run_id, status, reason)


def _intact(run: Run, log_models: bool) -> bool:
    """The run's logged model (when models are logged) and its TensorBoard events are still there."""
    model_uri = run.data.tags.get(tags.MODEL_URI)
    if log_models and (model_uri is None or inventory.model_problem(model_uri) is not None):
        return False
    return inventory.events_problem(run) is None


def sweep_params(params: Params, n_runs: int) -> dict[str, Any]:
    """The parent run's params: every fixed training setting and the grid."""
    sweep = params.sweep
    searched = sweep.search != "grid"
    fixed = {k: v for k, v in params.train.model_dump().items() if k not in sweep.grid and k not in sweep.space}
    search = (
        {"space": str(sweep.space), "seed": sweep.seed, "prune": sweep.prune, "time_budget_s": sweep.time_budget_s}
        if searched
        else {}
    )
    return {
        **fixed,
        "arch": params.model.arch,
        "search": sweep.search,
        **search,
        "grid": str(sweep.grid),
        "runs": n_runs,
        "workers": params.sweep.workers,
        "val_size": params.data.val_size,
        "subset": params.data.subset,
    }
