"""The training side of tracking: a separate tracker process owns MLflow and TensorBoard.

`start_tracker` spawns the tracker process (tracker_service.py) before the training process has even imported
torch, so MLflow's import, the store's schema migrations and torch.export's first-use cost run on the other
core while this one loads torch and the data. Training then only puts small messages on a queue (epoch
results, parameter snapshots, final weights); the tracker writes them in order. The training process never
imports MLflow and never runs torch.export, so its numbers do not depend on whether tracking is on.

Nothing here imports torch or MLflow; `Tracker.check()` turns a failure in the tracker process into
`TrackingFailed` in the training process at the next epoch.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import queue
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fashion_mlops import interrupts
from fashion_mlops.config import Params
from fashion_mlops.grid import cell_name
from fashion_mlops.results import EpochResult
from fashion_mlops.tracker_messages import (
    Begin,
    CellEnded,
    CellIds,
    CellStarted,
    CellTrained,
    DatasetShape,
    Done,
    EpochEnded,
    Failed,
    IdsRequested,
    Ready,
    Setup,
    SweepEnded,
    SweepFinished,
)
from fashion_mlops.tracking_errors import TrackingFailed, TrackingUnavailable

if TYPE_CHECKING:
    from torch import nn

    from fashion_mlops.datasets import Split

SAMPLE_IMAGES = 64  # TensorBoard's image grid
EXAMPLE_IMAGES = 4  # the logged model's input example: torch.export specialises a batch of one
POLL_S = 0.1
END_TIMEOUT_S = 120.0  # how long ending the sweep may wait for the tracker to write what it was sent


def sweep_params(params: Params, n_runs: int) -> dict[str, Any]:
    """The parent run's params: every fixed training setting and the grid."""
    fixed = {k: v for k, v in params.train.model_dump().items() if k not in params.sweep.grid}
    return {
        **fixed,
        "arch": params.model.arch,
        "grid": str(params.sweep.grid),
        "runs": n_runs,
        "workers": params.sweep.workers,
        "val_size": params.data.val_size,
        "subset": params.data.subset,
    }


def histograms_due(epoch: int, histogram_every: int) -> bool:
    """Whether weight and gradient histograms are written at this epoch (0 turns them off)."""
    return bool(histogram_every) and epoch % histogram_every == 0


def histogram_snapshot(model: nn.Module) -> dict[str, Any]:
    """Copies of every parameter's values and gradient as float32 arrays, keyed by their TensorBoard tags."""
    snapshot = {}
    for name, parameter in model.named_parameters():
        snapshot[f"weights/{name}"] = _array(parameter.detach().float())
        if parameter.grad is not None:
            snapshot[f"gradients/{name}"] = _array(parameter.grad.detach().float())
    return snapshot


def _array(tensor: Any) -> Any:
    """A CPU copy as a standard-layout NumPy array; a copy because the queue pickles it later, on a thread."""
    return tensor.to("cpu", copy=True).contiguous().numpy()


class CellChannel:
    """Where a grid cell's messages go: the tracker's queue (picklable, so worker processes get it too)."""

    def __init__(self, commands: Any, histogram_every: int, log_models: bool) -> None:
        self.commands = commands
        self.histogram_every = histogram_every
        self.log_models = log_models

    def cell(self, index: int) -> RemoteCellRun:
        return RemoteCellRun(self, index)


class RemoteCellRun:
    """One grid cell's run, as seen from training: each call puts one message on the tracker's queue."""

    def __init__(self, channel: CellChannel, index: int) -> None:
        self.channel = channel
        self.index = index

    def _send(self, message: Any) -> None:
        self.channel.commands.put(message)

    def log_start(self, train: Split) -> None:
        shape = DatasetShape(
            tuple(train.images.shape), str(train.images.numpy().dtype), tuple(train.labels.shape),
            str(train.labels.numpy().dtype),
        )  # fmt: skip
        self._send(CellStarted(self.index, _array(train.images[:SAMPLE_IMAGES]), len(train), shape))

    def log_epoch(self, result: EpochResult, model: nn.Module) -> None:
        due = histograms_due(result.epoch, self.channel.histogram_every)
        self._send(EpochEnded(self.index, result, histogram_snapshot(model) if due else None))

    def log_finish(self, model: nn.Module, history: list[EpochResult], duration_s: float, val: Split) -> None:
        weights = {k: _array(v) for k, v in model.state_dict().items()} if self.channel.log_models else None
        self._send(CellTrained(self.index, history, duration_s, weights, _array(val.images[:EXAMPLE_IMAGES])))

    def end(self, status: str, reason: str | None = None) -> None:
        self._send(CellEnded(self.index, status, reason))


class Tracker:
    """The tracker process, from the training process: start it, hand out cell runs, end it."""

    def __init__(self, process: Any, commands: Any, replies: Any, channel: CellChannel) -> None:
        self.process = process
        self.commands = commands
        self.replies = replies
        self.channel = channel
        self.ended = False
        atexit.register(self._end_if_abandoned)

    def begin(self) -> Ready:
        """The data is loaded: the tracker creates the sweep's parent run and answers with reusable cells."""
        self.commands.put(Begin())
        return self._wait_for(Ready)

    def cell(self, index: int) -> RemoteCellRun:
        return self.channel.cell(index)

    def check(self) -> None:
        """Raise TrackingFailed if the tracker process reported a failure or died."""
        try:
            reply = self.replies.get_nowait()
        except queue.Empty:
            reply = None
        if isinstance(reply, Failed):
            raise _error(reply)
        if not self.process.is_alive():
            raise self._died()

    def cell_ids(self) -> dict[int, tuple[str, str | None]]:
        """Every cell's run id and model URI, once the tracker has written everything sent so far."""
        self.commands.put(IdsRequested())
        return self._wait_for(CellIds).ids

    def finish(self, metrics: dict[str, float], tags: dict[str, str], reports: Path) -> None:
        """Log the summary and the reports to the parent run, end it FINISHED, and let the tracker exit."""
        self.commands.put(SweepFinished(metrics, tags, str(reports)))
        self._wait_for(Done)
        self._join()

    def end(self, status: str, reason: str | None = None) -> None:
        """End the sweep (and any cell run still open) with `status`; waits for the tracker to exit."""
        if self.ended:
            return
        self.commands.put(SweepEnded(status, reason))
        self._join()

    def _wait_for(self, kind: type) -> Any:
        """Block (interruptibly) until the tracker answers with `kind`; a failure is raised as one line."""
        while True:
            interrupts.check()
            try:
                reply = self.replies.get(timeout=POLL_S)
            except queue.Empty:
                if not self.process.is_alive():
                    raise self._died() from None
                continue
            if isinstance(reply, Failed):
                raise _error(reply)
            if isinstance(reply, kind):
                return reply

    def _died(self) -> TrackingFailed:
        return TrackingFailed(f"the tracker process died (exit code {self.process.exitcode})")

    def _join(self) -> None:
        """Wait for the tracker process to exit (END_TIMEOUT_S at most, then stop it)."""
        self.ended = True
        self.process.join(END_TIMEOUT_S)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)

    def _end_if_abandoned(self) -> None:
        """At interpreter exit: a sweep that never ended its tracker (a bug, or an early exit) ends it KILLED."""
        if not self.ended and self.process.is_alive():
            self.end("KILLED", "the sweep process exited without ending the sweep")


def _error(reply: Failed) -> TrackingFailed | TrackingUnavailable:
    """The one-line error the training process raises for the tracker's failure report."""
    if reply.unavailable:
        return TrackingUnavailable(reply.message)
    return TrackingFailed(f"the tracker process failed: {reply.message}")


class NullTracker:
    """Tracking off (`tracking.enabled: false`): every call does nothing."""

    ready = Ready(sweep_run_id="untracked")

    def begin(self) -> Ready:
        return self.ready

    def cell(self, index: int) -> NullCellRun:
        return NullCellRun()

    @property
    def channel(self) -> None:
        return None

    def check(self) -> None: ...

    def cell_ids(self) -> dict[int, tuple[str, str | None]]:
        return {}

    def finish(self, metrics: dict[str, float], tags: dict[str, str], reports: Path) -> None: ...

    def end(self, status: str, reason: str | None = None) -> None: ...


class NullCellRun:
    """A cell run that logs nothing."""

    def log_start(self, train: Split) -> None: ...

    def log_epoch(self, result: EpochResult, model: nn.Module) -> None: ...

    def log_finish(self, model: nn.Module, history: list[EpochResult], duration_s: float, val: Split) -> None: ...

    def end(self, status: str, reason: str | None = None) -> None: ...


def start_tracker(params: Params, params_path: Path) -> Tracker | NullTracker:
    """Spawn the tracker process (which connects to the store at once), or a NullTracker when tracking is off."""
    if not params.tracking.enabled:
        return NullTracker()
    context = mp.get_context("spawn")
    commands, replies = context.Queue(), context.Queue()
    cells = [(cell_name(i, spec.swept), spec) for i, spec in enumerate(params.cells())]
    setup = Setup(params, str(params_path), sweep_params(params, len(cells)), cells, os.getpid())
    process = context.Process(target=_serve, args=(setup, commands, replies), name="fashion-mlops-tracker")
    process.start()
    channel = CellChannel(commands, params.tracking.histogram_every, params.tracking.log_models)
    return Tracker(process, commands, replies, channel)


def _serve(setup: Setup, commands: Any, replies: Any) -> None:
    """The tracker process's entry point (imported there, so this process never imports MLflow)."""
    from fashion_mlops.tracker_service import serve

    serve(setup, commands, replies)
