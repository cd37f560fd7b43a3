"""Grid cells as Ray tasks (`sweep.executor: ray`), on a Ray instance started for the sweep or on a running cluster.

Each cell is one task that asks for the CPU threads it trains with (and a GPU where it trains on one) and trains its
cell exactly as the local executor does (`sweep.run_cell`: same seed, same data, same thread count), writing its child
run to the tracking store itself. The training data goes to the cluster once, through Ray's object store. The
trained weights come back with the task's result and go to this process's model export process, so models are
logged, and runs end FINISHED, as in a local sweep. A task on another host writes its TensorBoard events into a
private directory there and sends them back with its result; they land under `tracking.tensorboard_dir` here.

A cell whose worker process or node dies ends FAILED and the sweep goes on, as with a diverging cell. Ctrl-C or
SIGTERM cancels the tasks: each ends its run KILLED at its next training step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fashion_mlops import interrupts
from fashion_mlops.errors import ConfigError
from fashion_mlops.tracking import CellRuns
from fashion_mlops.tracking.client_settings import CLIENT_DEFAULTS

if TYPE_CHECKING:
    from fashion_mlops.config import Params, TrainConfig
    from fashion_mlops.data.splits import Splits
    from fashion_mlops.sweep import CellOutcome
    from fashion_mlops.tracking.exporter import Export

POLL_S = 0.2
CANCEL_GRACE_S = 30.0  # how long cancelled tasks get to end their runs KILLED before their processes are killed
MAX_EVENT_BYTES = 1 << 30  # TensorBoard files a remote cell may send back: its scalars, histograms and images
# what the tasks' processes need from this one's environment: the store, MLflow's client settings, the log level
FORWARDED_ENV = ("MLFLOW_TRACKING_URI", "FASHION_MLOPS_LOG", *CLIENT_DEFAULTS)


@dataclass(frozen=True)
class Driver:
    """Where the sweep process runs: a task on the same host works in its directory, others in a private one."""

    host: str
    cwd: str


@dataclass
class CollectedExports:
    """Stands in for the export process's queue inside a task: the models to log go back with the task's result."""

    items: list[Export] = field(default_factory=list)

    def put(self, item: Export) -> None:
        self.items.append(item)


@dataclass(frozen=True)
class TaskResult:
    outcome: CellOutcome
    exports: list[Export]
    events: dict[str, bytes]  # TensorBoard files by path relative to the sweep's directory, from another host


def run_on_ray(
    pending: list[CellOutcome],
    splits: Splits,
    runs: CellRuns,
    params: Params,
    tracking_uri: str,
    default_threads: int,
    on_epoch: Callable[[str, float], None],
    check: Callable[[], None],
) -> None:
    """Train `pending` as Ray tasks; results land back in `pending`. `on_epoch(name, val_accuracy)` reports
    progress, `check()` is called between polls (it raises to stop the sweep)."""
    with ray_connection(params.sweep.ray_address, tracking_uri) as ray:
        from ray.util.queue import Queue

        progress = Queue(actor_options={"num_cpus": 0})
        splits_ref = ray.put(splits)
        driver = Driver(socket.gethostname(), os.getcwd())
        task = ray.remote(train_cell_task)
        waiting = list(pending)
        running: dict[Any, tuple[CellOutcome, Request]] = {}
        capacity = capacity_of(ray)
        try:
            while waiting or running:
                # only as many tasks as the cluster can run at once: a finished task's warm worker process (torch
                # and MLflow imported) takes the next cell, where a queued task would have started a cold one
                while waiting:
                    request = request_for(waiting[0].cell.train, capacity, default_threads)
                    if running and not _fits(request, running, capacity):
                        break
                    outcome = waiting.pop(0)
                    options = task.options(
                        num_cpus=request.cpus,
                        num_gpus=request.gpus,
                        max_retries=0,  # a cell retried elsewhere would be a second child run: a dead worker fails it
                        name=f"fashion-mlops {outcome.cell.name}",
                    )
                    threads = outcome.cell.train.threads or default_threads
                    ref = options.remote(outcome, splits_ref, remote_runs(runs), threads, driver, progress)
                    running[ref] = (outcome, request)
                done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
                _drain(progress, on_epoch)
                interrupts.check()
                check()
                for ref in done:
                    _take(ray, ref, running.pop(ref)[0], runs, params.tracking.tensorboard_dir)
                if done and waiting:
                    capacity = capacity_of(ray)  # nodes may have joined or left the cluster
            _drain(progress, on_epoch)
        except BaseException:
            _cancel(ray, list(running))
            raise


@contextlib.contextmanager
def ray_connection(address: str | None, tracking_uri: str) -> Iterator[Any]:
    """`ray`, joined to the cluster at `address` or to a Ray instance started here (None) for the block."""
    if address is not None and "RAY_AUTH_MODE" not in os.environ and _auth_token_available():
        # a head started by `ray start` requires its token by default, but a driver joining it sends one only in
        # token mode, which Ray reads when it is imported
        os.environ["RAY_AUTH_MODE"] = "token"
    ray = _import_ray()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    _connect(ray, address, tracking_uri)
    for sig, handler in handlers.items():  # Ray's own SIGTERM handler would abort this process, leaving runs open
        signal.signal(sig, handler)
    try:
        yield ray
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()  # disconnects; a Ray instance started for the sweep stops with it


def train_cell_task(
    outcome: CellOutcome, splits: Splits, runs: CellRuns, threads: int, driver: Driver, progress: Any
) -> TaskResult:
    """One grid cell in a Ray worker process, trained and tracked as the local executor does it."""
    import torch

    from fashion_mlops.sweep import run_cell

    same_host = socket.gethostname() == driver.host
    workdir = driver.cwd if same_host else tempfile.mkdtemp(prefix="fashion-mlops-cell-")
    os.chdir(workdir)  # relative store, artifact and TensorBoard paths mean what they mean to the sweep process
    torch.set_num_threads(threads)

    def on_epoch(name: str, result: Any) -> None:
        with contextlib.suppress(Exception):  # progress display only: never worth failing the cell
            progress.put_nowait((name, result.val_accuracy))

    run = runs.cell(outcome.cell)
    try:
        with interrupts.deferred():  # a cancelled task stops at its next training step, not inside an MLflow write
            done = run_cell(outcome, splits, run, on_epoch)
        exports = runs.exports.items if isinstance(getattr(runs, "exports", None), CollectedExports) else []
        log_dir = getattr(getattr(run, "tensorboard", None), "log_dir", None)
        events = _collect_events(Path(log_dir)) if log_dir is not None and not same_host else {}
    finally:
        if not same_host:
            os.chdir(tempfile.gettempdir())
            shutil.rmtree(workdir, ignore_errors=True)
    return TaskResult(done, exports, events)


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError:
        raise ConfigError(
            "sweep.executor = 'ray' needs the ray package; install it with `pip install 'fashion-mlops[cluster]'` "
            "(make install does), or set sweep.executor: local"
        ) from None
    return ray


def _connect(ray: Any, address: str | None, tracking_uri: str) -> None:
    """Join the cluster at `address`, or start a Ray instance here when it is None."""
    env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
    env["MLFLOW_TRACKING_URI"] = tracking_uri
    settings: dict[str, Any] = {
        "runtime_env": {"env_vars": env},
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "configure_logging": False,
    }
    if address is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        ray.init(address="local", num_cpus=cores, **settings)
        return
    settings.pop("include_dashboard")  # a setting of the cluster, not of a driver joining it
    try:
        ray.init(address=address, **settings)
    except (ConnectionError, RuntimeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(
            f"sweep.ray_address = {address!r}: cannot join the Ray cluster ({first}); start its head with "
            "`ray start --head` or fix the address"
        ) from None


def _auth_token_available() -> bool:
    """A Ray cluster token in the environment or in Ray's default file (`ray get-auth-token` prints it)."""
    token_file = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or Path(token_file).is_file()


@dataclass(frozen=True)
class Request:
    """The resources one cell's task asks for."""

    cpus: int
    gpus: int


@dataclass(frozen=True)
class Capacity:
    cpus: float  # of the whole cluster
    gpus: float
    largest_node_cpus: int  # a task asking for more would wait forever for a node that can run it


def capacity_of(ray: Any) -> Capacity:
    total = ray.cluster_resources()
    nodes = [node["Resources"].get("CPU", 0) for node in ray.nodes() if node.get("Alive")]
    return Capacity(total.get("CPU", 0), total.get("GPU", 0), max(1, int(max(nodes, default=1))))


def request_for(train: TrainConfig, capacity: Capacity, default_threads: int) -> Request:
    """The CPU threads a run trains with (at most one node's CPUs), and a GPU where it trains on one."""
    wants_gpu = train.device == "cuda" or (train.device == "auto" and capacity.gpus >= 1)
    return Request(min(train.threads or default_threads, capacity.largest_node_cpus), 1 if wants_gpu else 0)


def _fits(request: Request, running: dict[Any, tuple[CellOutcome, Request]], capacity: Capacity) -> bool:
    """Whether the cluster has room for a task asking for `request` beside the running ones."""
    cpus = sum(r.cpus for _, r in running.values()) + request.cpus
    gpus = sum(r.gpus for _, r in running.values()) + request.gpus
    return cpus <= capacity.cpus and gpus <= capacity.gpus


def remote_runs(runs: CellRuns) -> CellRuns:
    """What a task opens its child runs with: the models it trains come back in its result instead of going to the
    export process's queue, which lives in this process."""
    if dataclasses.is_dataclass(runs) and getattr(runs, "exports", None) is not None:
        return dataclasses.replace(runs, exports=CollectedExports())
    return runs


def _take(ray: Any, ref: Any, outcome: CellOutcome, runs: CellRuns, tensorboard_dir: str) -> None:
    """A finished task's result into `outcome`; a task whose worker died fails its cell, and the sweep goes on."""
    from ray import exceptions

    died = (
        exceptions.WorkerCrashedError,
        exceptions.NodeDiedError,
        exceptions.LocalRayletDiedError,
        exceptions.ObjectLostError,
        exceptions.OutOfMemoryError,
    )
    try:
        result: TaskResult = ray.get(ref)
    except died as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        outcome.status, outcome.failure = "FAILED", f"Ray worker died: {type(error).__name__}: {reason}"[:500]
        _end_run_of_dead_task(runs, outcome)
        return
    except exceptions.TaskCancelledError:
        raise KeyboardInterrupt("cell task cancelled") from None
    except exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None  # the cell failed as it would have here: the sweep stops the same way
        raise
    outcome.__dict__.update(result.outcome.__dict__)
    inbox = getattr(runs, "exports", None)
    for export in result.exports:
        inbox.put(export)
    _write_events(result.events, tensorboard_dir)


def _end_run_of_dead_task(runs: CellRuns, outcome: CellOutcome) -> None:
    """End FAILED the child run a dead task left RUNNING (found by its sweep and name; it may not have started)."""
    sweep_run_id = getattr(runs, "sweep_run_id", None)
    if sweep_run_id is None:
        return
    import mlflow

    from fashion_mlops.tracking import tags
    from fashion_mlops.tracking.runs import end_run, tracking_writes

    with tracking_writes():
        found = mlflow.MlflowClient().search_runs(
            [runs.experiment_id],
            filter_string=f"tags.`{tags.SWEEP}` = '{sweep_run_id}' and attributes.run_name = '{outcome.cell.name}' "
            "and attributes.status = 'RUNNING'",
        )
        for run in found:
            outcome.run_id = run.info.run_id
            end_run(run.info.run_id, "FAILED", outcome.failure)


def _cancel(ray: Any, refs: list[Any]) -> None:
    """Cancel running tasks: each ends its run KILLED at its next step; those that do not stop in time are killed."""
    for ref in refs:
        with contextlib.suppress(Exception):
            ray.cancel(ref)
    with contextlib.suppress(Exception):
        _, left = ray.wait(refs, num_returns=len(refs), timeout=CANCEL_GRACE_S)
        for ref in left:
            ray.cancel(ref, force=True)


def _drain(progress: Any, on_epoch: Callable[[str, float], None]) -> None:
    from ray.util.queue import Empty

    while True:
        try:
            name, val_accuracy = progress.get_nowait()
        except Empty:
            return
        on_epoch(name, val_accuracy)


def _collect_events(log_dir: Path) -> dict[str, bytes]:
    """A remote cell's TensorBoard files, by their path as the run's tag records it."""
    found: dict[str, bytes] = {}
    total = 0
    for path in sorted(log_dir.rglob("*")):
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
            if total > MAX_EVENT_BYTES:
                break
            found[str(log_dir / path.relative_to(log_dir))] = path.read_bytes()
    return found


def _write_events(events: dict[str, bytes], tensorboard_dir: str) -> None:
    """Write a remote cell's TensorBoard files here, refusing any path outside `tracking.tensorboard_dir`."""
    root = Path(tensorboard_dir).resolve()
    for name, data in events.items():
        target = Path(name).resolve()
        if not target.is_relative_to(root):
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
