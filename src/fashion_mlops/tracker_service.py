"""The tracker process: the one writer of a sweep's MLflow runs, TensorBoard events and logged models.

Started by `tracker_client.start_tracker` (spawn). It connects to the store at once (MLflow's import and a new
store's migrations overlap the training process's start-up), waits for `Begin`, creates the parent run, answers
`Ready` with the reusable cells, and then writes every message in the order it was sent. It ignores Ctrl-C (the
terminal sends it to the whole process group; the training process decides what it means) and ends every open
run KILLED if the training process dies or this process gets SIGTERM.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from fashion_mlops.manifest import load_manifest
from fashion_mlops.store import connect
from fashion_mlops.tracker_messages import (
    Begin,
    CellEnded,
    CellIds,
    CellStarted,
    CellTrained,
    Done,
    EpochEnded,
    Failed,
    IdsRequested,
    Ready,
    ReusedCell,
    Setup,
    SweepEnded,
    SweepFinished,
)
from fashion_mlops.tracking import SweepTracker, reap_orphaned_runs
from fashion_mlops.tracking_errors import TrackingUnavailable

PARENT_CHECK_S = 1.0
# The tracker yields the CPU to training. At nice 0 it took cores from training's OpenMP threads mid-barrier (the
# tutorial grid on 2 cores: +20 s of training CPU, +20-30 % wall). At 19 it gets ~1.5 % of a core while training
# keeps every core busy (its OpenMP workers spin between ops), so there most of the writing waits for training to
# end and the sweep then waits for it (a few seconds); where a core is free it writes beside training.
NICENESS = 19


class _Stopped(BaseException):  # not an Exception: the write handlers catch those
    """SIGTERM reached the tracker process (from outside, or from its watchdog when the sweep process died)."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped(f"signal {signum}")


def _watch_sweep_process(died: threading.Event) -> None:
    """Wait for the sweep process to end; if it ends before the sweep does, stop the tracker's main thread.

    A signal rather than a flag: a sweep process killed half-way through putting a large message (a model's
    weights) leaves the main thread blocked reading the rest of it, and only a signal interrupts that read.
    """
    parent = mp.parent_process()
    while parent is not None and parent.is_alive():
        time.sleep(PARENT_CHECK_S)
    died.set()
    os.kill(os.getpid(), signal.SIGTERM)


def serve(setup: Setup, commands: Any, replies: Any) -> None:
    """Connect, then serve messages until the sweep ends (or the training process is gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)
    _yield_cpu_to_training()
    try:
        experiment_id = connect(setup.params)
        reap_orphaned_runs(experiment_id)
    except TrackingUnavailable as error:
        replies.put(Failed(str(error), unavailable=True))
        return
    except Exception as error:  # reported to the training process as one line
        replies.put(Failed(f"{type(error).__name__}: {error}"))
        return
    service = _Service(setup, replies)
    _serve_until_the_sweep_ends(service, setup, commands)
    # skip the interpreter's teardown of torch, MLflow and SQLAlchemy (~3 s): every run is ended, every
    # TensorBoard writer closed and every store write committed; only the last replies still need flushing
    replies.close()
    replies.join_thread()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _yield_cpu_to_training() -> None:
    """Lower this process's priority (NICENESS) so that writing runs mostly waits for CPU time training leaves.

    Not entirely: what it does run while cells train (its torch import, ~1.5 s of CPU) still costs training a
    few seconds on a 2-core machine (traced: 63.1 s of training vs 58.7 s with tracking off, README).
    """
    if hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(NICENESS)


def _serve_until_the_sweep_ends(service: _Service, setup: Setup, commands: Any) -> None:
    died = threading.Event()
    threading.Thread(target=_watch_sweep_process, args=(died,), daemon=True, name="sweep-watchdog").start()
    try:
        service.loop(commands)
    except _Stopped as stop:
        if died.is_set():
            service.abandon(f"the sweep process {setup.sweep_pid} died while the run was RUNNING")
        else:
            service.abandon(f"the tracker process got {stop}")


def _warm_up_cell_logging() -> None:
    """Import what the cell runs need (torch, TensorBoard, torch.export: ~4 s) while the first cell trains.

    One intra-op thread: this process's tensor work is small, and idle OpenMP workers spin-wait on the cores
    that training needs (measured: +29 s of CPU over the tutorial grid with the default thread count).
    """
    import torch
    import torch.export

    import fashion_mlops.cell_run  # noqa: F401

    torch.set_num_threads(1)


class _Service:
    def __init__(self, setup: Setup, replies: Any) -> None:
        self.setup = setup
        self.replies = replies
        self.sweep: SweepTracker | None = None
        self.cells: dict[int, Any] = {}
        self.ended: set[int] = set()
        self.failure: str | None = None

    def loop(self, commands: Any) -> None:
        while not self.handle(commands.get()):
            pass

    def handle(self, message: Any) -> bool:
        """Write one message; True when the sweep has ended. After a failure only endings are attempted."""
        if isinstance(message, SweepEnded):
            self._end(message.status, message.reason)
            return True
        if isinstance(message, CellEnded):
            self._best_effort(self._end_cell, message.index, message.status, message.reason)
            return False
        if self.failure is not None:
            return False
        try:
            return self._write(message)
        except Exception as error:  # reported once; the training process stops the sweep
            self.failure = f"{type(error).__name__}: {error}"
            self.replies.put(Failed(self.failure))
            index = getattr(message, "index", None)
            if index is not None:  # that cell's run ends FAILED now, whatever the training side says later
                self._best_effort(self._end_cell, index, "FAILED", f"tracking failed: {self.failure}")
            return False

    def _write(self, message: Any) -> bool:
        if isinstance(message, Begin):
            self._begin()
        elif isinstance(message, CellStarted):
            self._start_cell(message)
        elif isinstance(message, EpochEnded):
            self.cells[message.index].log_epoch(message.result, message.histograms)
        elif isinstance(message, CellTrained):
            run = self.cells[message.index]
            run.log_finish(message.history, message.duration_s)
            if message.weights is not None:
                run.log_weights(message.weights, message.example_images)
        elif isinstance(message, IdsRequested):
            self.replies.put(CellIds({i: (run.run_id, run.model_uri) for i, run in self.cells.items()}))
        elif isinstance(message, SweepFinished):
            self._end_open_cells("FAILED", "finished")
            self.sweep.finish(message.metrics, message.tags, Path(message.reports))
            self.replies.put(Done())
            return True
        return False

    def _begin(self) -> None:
        setup = self.setup
        manifest = load_manifest(setup.params.data.manifest)
        self.sweep = SweepTracker.start(setup.params, Path(setup.params_path), manifest, setup.sweep_params)
        reused = {}
        for index, (name, spec) in enumerate(setup.cells):
            earlier = self.sweep.find_reusable(spec)
            if earlier is not None:
                run_id, history, duration_s = self.sweep.reuse(earlier, spec, name)
                reused[index] = ReusedCell(run_id, history, duration_s, earlier.model_uri, earlier.run_id)
        self.replies.put(Ready(self.sweep.sweep_run_id, reused))
        _warm_up_cell_logging()

    def _start_cell(self, message: CellStarted) -> None:
        from fashion_mlops.cell_run import CellRun

        name, spec = self.setup.cells[message.index]
        sweep = self.sweep
        run = CellRun(self.setup.params, spec, sweep.info, name, sweep.fingerprint(spec))
        self.cells[message.index] = run
        run.log_start(message.sample_images, message.train_images, sweep.dataset(message.dataset))

    def _end_cell(self, index: int, status: str, reason: str | None) -> None:
        if index in self.cells and index not in self.ended:
            self.ended.add(index)
            self.cells[index].end(status, reason)

    def _end_open_cells(self, status: str, reason: str | None) -> None:
        """End, with `status`, every cell run the training side has not ended (it was stopped, or failed)."""
        for index in list(self.cells):
            self._best_effort(self._end_cell, index, status, f"still RUNNING when the sweep ended ({reason})")

    def _end(self, status: str, reason: str | None) -> None:
        """End open cells (KILLED or FAILED) and the sweep with `status`."""
        self._end_open_cells("KILLED" if status == "KILLED" else "FAILED", reason)
        if self.sweep is not None:
            self._best_effort(self.sweep.end, status, reason)
        self.replies.put(Done())

    def abandon(self, reason: str) -> None:
        """The training process is gone (or this process was stopped): end everything KILLED."""
        self._end("KILLED", reason)

    def _best_effort(self, write: Any, *args: Any) -> None:
        try:
            write(*args)
        except Exception as error:  # ending runs must go on past one failed write
            if self.failure is None:
                self.failure = f"{type(error).__name__}: {error}"
                self.replies.put(Failed(self.failure))
