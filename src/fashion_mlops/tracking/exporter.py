"""The model export process: logs each trained model as an MLflow pt2 model, then ends its run FINISHED.

torch.export is slow and switches oneDNN off process-wide while it traces, so it runs here, never beside training.
The sweep command starts this process before it imports torch, so that setting up the store (a new SQLite store
migrates its schema) overlaps the sweep's own start-up. Until its model is logged a run stays RUNNING: a FINISHED
run always has a model. If the sweep process dies, this process ends the runs its dead processes left RUNNING.
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

NICENESS = 19  # exporting waits for the CPU time training leaves: it must not take cores mid-step
POLL_S = 0.1
CLOSE_TIMEOUT_S = 300.0  # how long ending the sweep waits for the models already sent
GONE_CLOSE_TIMEOUT_S = 5.0  # the same, when the tracking server is gone and nothing more can be logged


@dataclass(frozen=True)
class Export:
    run_id: str
    arch: str
    weights: dict[str, np.ndarray]  # the trained state_dict, copied to CPU
    example_images: np.ndarray  # uint8 N x 1 x 28 x 28, N > 1: torch.export fixes a batch of one


@dataclass(frozen=True)
class Reply:
    """Connected (`experiment_id`), one model logged (`run_id`, `model_uri`) or a failure (`failure`)."""

    experiment_id: str | None = None
    run_id: str | None = None
    model_uri: str | None = None
    failure: str | None = None
    unavailable: bool = False  # the failure: the tracking server did not answer


def request(inbox: Any, run_id: str, arch: str, model: nn.Module, example_images: Any) -> None:
    """Queue `model` for export into `run_id` (a copy of its weights: training may go on with the tensors)."""
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
        self.closed = False
        self.process = context.Process(target=_serve, args=(params, self.inbox, self.replies), name="exporter")
        self.process.start()

    def connected(self) -> str:
        """Wait until the process has connected to the store (creating it); returns the experiment id."""
        while True:
            interrupts.check()
            with contextlib.suppress(queue.Empty):
                reply = self.replies.get(timeout=POLL_S)
                if reply.experiment_id is not None:
                    return reply.experiment_id
                if reply.unavailable:
                    raise TrackingUnavailable(reply.failure)
                self._take(reply)
            self.check()

    def check(self) -> None:
        """Collect logged models; raise TrackingFailed if an export failed or the process died."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._take(self.replies.get_nowait())
        if self.failure is not None:
            raise TrackingFailed(f"the model export process failed: {self.failure}")
        if not self.closed and not self.process.is_alive():
            raise TrackingFailed(f"the model export process died (exit code {self.process.exitcode})")

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> dict[str, str]:
        """Wait until every model sent so far is logged (`timeout_s` at most); run id -> model URI."""
        if not self.closed:
            self.closed = True
            self.inbox.put(None)
            deadline = time.monotonic() + timeout_s
            while self.process.is_alive() and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    self._take(self.replies.get(timeout=POLL_S))
            if self.process.is_alive():
                self.process.terminate()
                self.failure = self.failure or f"it did not log the trained models within {timeout_s:.0f} s"
            self.process.join()
        self.check()
        return self.model_uris

    def _take(self, reply: Reply) -> None:
        if reply.failure is not None:
            self.failure = self.failure or reply.failure
        elif reply.run_id is not None:
            self.model_uris[reply.run_id] = reply.model_uri


def log_model(run_id: str, model: nn.Module, example_images: np.ndarray) -> str:
    """Log `model` (on CPU, eval mode) into `run_id` as an MLflow pt2 model with signature and input example."""
    import mlflow

    mlflow.start_run(run_id=run_id)
    try:
        return mlflow.pytorch.log_model(
            model.to("cpu").eval(),
            name="model",
            input_example=example_images.astype(np.float32) / 255.0,
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
    died = interrupts.stop_when_parent_dies()
    experiment_id = None
    try:
        from fashion_mlops.tracking.store import connect

        try:
            experiment_id = connect(params)
        except Exception as error:  # reported as one line by the sweep process
            replies.put(Reply(failure=str(error), unavailable=isinstance(error, TrackingUnavailable)))
            return
        replies.put(Reply(experiment_id=experiment_id))
        # the first export's imports are slow: a thread does them while the first cell trains, and a sweep with
        # nothing to export (every cell reused) does not wait for them
        threading.Thread(target=_warm_up, daemon=True).start()
        _export_until_done(inbox, replies)
    except _Stopped:
        if died.is_set() and experiment_id is not None:
            from fashion_mlops.tracking.runs import reap_orphaned_runs

            reap_orphaned_runs(experiment_id)
    finally:
        replies.close()
        replies.join_thread()
        os._exit(0)  # skip torch's and MLflow's interpreter teardown: every write above is committed


def _export_until_done(inbox: Any, replies: Any) -> None:
    from fashion_mlops.tracking.runs import end_run

    failure = None
    while (message := inbox.get()) is not None:
        try:
            if failure is not None:  # the sweep stops at its next check; nothing more is exported
                raise TrackingFailed(failure)
            replies.put(Reply(run_id=message.run_id, model_uri=export_model(message)))
        except Exception as error:  # reported once, as one line, to the sweep process
            if failure is None:
                failure = f"{type(error).__name__}: {error}"
                replies.put(Reply(failure=failure))
            with contextlib.suppress(Exception):
                end_run(message.run_id, "FAILED", f"tracking failed: {failure}")


def _warm_up() -> None:
    import torch
    import torch.export

    import fashion_mlops.models  # noqa: F401

    torch.set_num_threads(1)  # idle OpenMP workers would spin on the cores training needs


def export_model(message: Export) -> str:
    """Log one model to its run, record its URI on the run and end it FINISHED; returns the model URI."""
    import torch

    from fashion_mlops.models import build_model
    from fashion_mlops.tracking.runs import end_run, set_model_uri

    model = build_model(message.arch)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in message.weights.items()})
    uri = log_model(message.run_id, model, message.example_images)
    set_model_uri(message.run_id, uri)
    end_run(message.run_id, "FINISHED")
    return uri
