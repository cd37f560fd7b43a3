"""The model export process: logs each trained model as an MLflow pt2 model, then ends its run FINISHED.

Exporting runs torch.export, which is slow and switches oneDNN off process-wide while it traces, so it happens in
this helper process and never beside training. The sweep command starts it before it imports torch, so that the
store's set-up (a new SQLite store migrates its schema) and this process's imports overlap the sweep's own. The
training side (the sweep process and its workers) puts one `Export` on the inbox per trained cell; the run stays
RUNNING until its model is logged, so a FINISHED run always has a model. If the sweep process dies, this process
ends the runs that its dead processes left RUNNING as KILLED.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

import numpy as np

from fashion_mlops import interrupts
from fashion_mlops.errors import TrackingFailed, TrackingUnavailable

if TYPE_CHECKING:
    from torch import nn

    from fashion_mlops.config import Params

MODEL_NAME = "model"
NICENESS = 19  # writing waits for the CPU time training leaves: it must not take cores mid-step
PARENT_CHECK_S = 1.0
POLL_S = 0.1
CLOSE_TIMEOUT_S = 300.0  # how long ending the sweep waits for the models already sent


@dataclass(frozen=True)
class Export:
    run_id: str
    arch: str
    weights: dict[str, np.ndarray]  # the trained state_dict on CPU
    example_images: np.ndarray  # uint8 N x 1 x 28 x 28, N > 1: torch.export specialises a batch of one


@dataclass(frozen=True)
class Exported:
    run_id: str
    model_uri: str


@dataclass(frozen=True)
class ExportFailed:
    message: str
    unavailable: bool = False  # the tracking server did not answer


@dataclass(frozen=True)
class Connected:
    experiment_id: str


def request(inbox: Any, run_id: str, arch: str, model: nn.Module, example_images: Any) -> None:
    """Queue `model` for export into `run_id` (copies of its weights, so training may go on with the tensors)."""
    weights = {k: v.detach().to("cpu", copy=True).contiguous().numpy() for k, v in model.state_dict().items()}
    inbox.put(Export(run_id, arch, weights, np.ascontiguousarray(example_images.cpu().numpy())))


def start_exporter(params: Params) -> ModelExporter | None:
    """The export process, started at once, or None when the sweep logs no models."""
    return ModelExporter(params) if params.tracking.enabled and params.tracking.log_models else None


class ModelExporter:
    """The export process, from the sweep process: start it, check on it, wait for every model sent."""

    def __init__(self, params: Params) -> None:
        context = mp.get_context("spawn")
        self.inbox, self.replies = context.Queue(), context.Queue()
        self.model_uris: dict[str, str] = {}
        self.failure: str | None = None
        self.process = context.Process(
            target=_serve, args=(params, self.inbox, self.replies), name="fashion-mlops-exporter"
        )
        self.process.start()
        self.closed = False

    def connected(self) -> str:
        """Wait until the process has connected to the store (and created it); returns the experiment id."""
        while True:
            interrupts.check()
            try:
                reply = self.replies.get(timeout=POLL_S)
            except queue.Empty:
                self.check()
                continue
            if isinstance(reply, Connected):
                return reply.experiment_id
            if isinstance(reply, ExportFailed) and reply.unavailable:
                raise TrackingUnavailable(reply.message)
            self._take(reply)
            self.check()

    def check(self) -> None:
        """Collect finished exports; raise TrackingFailed if an export failed or the process died."""
        while True:
            try:
                self._take(self.replies.get_nowait())
            except queue.Empty:
                break
        if self.failure is not None:
            raise TrackingFailed(f"the model export process failed: {self.failure}")
        if not self.closed and not self.process.is_alive():
            raise TrackingFailed(f"the model export process died (exit code {self.process.exitcode})")

    def close(self) -> dict[str, str]:
        """Wait until every model sent so far is logged (CLOSE_TIMEOUT_S at most); run id -> model URI."""
        if not self.closed:
            self.closed = True
            self.inbox.put(None)
            deadline = time.monotonic() + CLOSE_TIMEOUT_S
            while self.process.is_alive() and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    self._take(self.replies.get(timeout=POLL_S))
            if self.process.is_alive():
                self.process.terminate()
            self.process.join()
        self.check()
        return self.model_uris

    def _take(self, reply: Exported | ExportFailed) -> None:
        if isinstance(reply, ExportFailed):
            self.failure = self.failure or reply.message
        else:
            self.model_uris[reply.run_id] = reply.model_uri


def log_model(run_id: str, model: nn.Module, example_images: np.ndarray) -> str:
    """Log `model` (on CPU, eval mode) into `run_id` as an MLflow pt2 model with signature and input example."""
    import mlflow

    example = example_images.astype(np.float32) / 255.0
    mlflow.start_run(run_id=run_id)
    try:
        return mlflow.pytorch.log_model(
            model.to("cpu").eval(),
            name=MODEL_NAME,
            input_example=example,
            serialization_format="pt2",
            pip_requirements=[f"torch=={version('torch')}", f"torchvision=={version('torchvision')}"],
            # the signature comes from the example already; replaying it as a serving request reloads the model
            validate_serving_input=False,
        ).model_uri
    finally:
        mlflow.end_run()  # the run is momentarily FINISHED here; `_export` sets its final status right after


class _Stopped(BaseException):  # not an Exception: the export handler catches those
    """SIGTERM reached this process: from outside, or from its watchdog when the sweep process died."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped(f"signal {signum}")


def _serve(params: Params, inbox: Any, replies: Any) -> None:
    """The export process: export until the sweep says it is done, or until the sweep process dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the sweep process to handle
    signal.signal(signal.SIGTERM, _stop)
    with contextlib.suppress(OSError):
        os.nice(NICENESS)
    died = threading.Event()
    threading.Thread(target=_watch_sweep_process, args=(died,), daemon=True).start()
    from fashion_mlops.tracking.store import connect

    try:
        experiment_id = connect(params)
    except Exception as error:  # reported as one line by the sweep process
        replies.put(ExportFailed(str(error), unavailable=isinstance(error, TrackingUnavailable)))
        return
    replies.put(Connected(experiment_id))
    # the first export's imports are slow: a thread does them while the first cell trains, and a sweep with
    # nothing to export (every cell reused) does not wait for them
    threading.Thread(target=_warm_up, daemon=True).start()
    from fashion_mlops.tracking.runs import end_run, reap_orphaned_runs

    failure = None
    try:
        while (message := inbox.get()) is not None:
            if failure is not None:  # the sweep stops at its next check; nothing more is exported
                end_run(message.run_id, "FAILED", f"tracking failed: {failure}")
                continue
            try:
                replies.put(Exported(message.run_id, _export(message)))
            except Exception as error:  # reported once, as one line, to the sweep process
                failure = f"{type(error).__name__}: {error}"
                replies.put(ExportFailed(failure))
                with contextlib.suppress(Exception):
                    end_run(message.run_id, "FAILED", f"tracking failed: {failure}")
    except _Stopped:
        if died.is_set():
            reap_orphaned_runs(experiment_id)
    replies.close()
    replies.join_thread()
    os._exit(0)  # skip torch's and MLflow's interpreter teardown: every write above is committed


def _warm_up() -> None:
    import torch
    import torch.export

    import fashion_mlops.models  # noqa: F401

    torch.set_num_threads(1)  # idle OpenMP workers would spin on the cores training needs


def _export(message: Export) -> str:
    import torch

    from fashion_mlops.models import build_model
    from fashion_mlops.tracking.runs import end_run, set_model_uri

    model = build_model(message.arch)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in message.weights.items()})
    uri = log_model(message.run_id, model, message.example_images)
    set_model_uri(message.run_id, uri)
    end_run(message.run_id, "FINISHED")
    return uri


def _watch_sweep_process(died: threading.Event) -> None:
    """If the sweep process ends before the sweep does, stop this process's main thread with a signal (a flag
    would not interrupt a read blocked on a half-sent message)."""
    parent = mp.parent_process()
    while parent is not None and parent.is_alive():
        time.sleep(PARENT_CHECK_S)
    died.set()
    os.kill(os.getpid(), signal.SIGTERM)
