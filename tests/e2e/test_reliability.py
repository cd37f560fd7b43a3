"""Reliability: what the CLI leaves behind when training diverges, a process is signalled or killed, two
evaluations race for the registry alias, or the tracking server is there or not.

Everything runs as real `python -m fashion_mlops` processes on conftest's sample dataset (decompressed once
into a shared data dir), each in its own work directory with its own SQLite store unless a test shares one on
purpose. Signals are real signals sent to the running process; the stores are read back with MlflowClient
once the process has ended. While a sweep is still running, the test only reads its SQLite file through a
read-only sqlite3 connection: an MlflowClient opened on a store whose schema is still being created by the
sweep would try to create it too.

Every run uses simple_cnn, one CPU thread (train.threads: 1) and EPOCHS epochs unless a test needs fewer, or
more to signal in; expensive set-ups (reference sweeps, interrupted sweeps, the registry sequence, the MLflow
server) are module-scoped fixtures shared by several tests, and independent processes of one fixture run side
by side.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import psutil
import pytest
from mlflow.entities import Run, ViewType
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing import event_accumulator

from fashion_mlops.data.download import download_dataset
from fashion_mlops.data.manifest import load_manifest
from fashion_mlops.repro_check import VOLATILE_COLUMNS
from fashion_mlops.tracking import tags
from helpers import REPO_ROOT, VENV_BIN, free_port, stop_group, tiny_params, wait_for_http, write_params

pytestmark = pytest.mark.slow

GRID = {"lr": [0.01, 0.003], "batch_size": [32, 64]}  # four cells: long enough to interrupt after the first
# Enough epochs that the windows the interrupt tests signal in (the second cell's epochs 1..EPOCHS-1) last
# several of their polls: on a fast machine one epoch of the sample is about as short as one poll.
EPOCHS = 10
N_CELLS = 4
# SGD at lr 10 with momentum 0.9 and weight decay 0.5 overflows the sample's loss to NaN within epoch 1.
DIVERGING = {"train.optimizer": "sgd", "train.momentum": 0.9, "train.weight_decay": 0.5, "train.epochs": 1}
PROCESS_TIMEOUT_S = 300
SIGNAL_WAIT_TIMEOUT_S = 240
UNREACHABLE_LIMIT_S = 15.0
# MLflow's HTTP retries are bounded (tracking/client_settings.py): a sweep notices a dead server within a minute
SERVER_GONE_LIMIT_S = 75.0
# An interrupted sweep first finishes exporting the models of the cells it trained (a few seconds each here).
INTERRUPT_EXIT_LIMIT_S = 60.0
PROGRESS = re.compile(r"sweep:\s+\d+%\|[^|]*\| (\d+)/\d+ ")
EXPORTER_NOTICE_S = 30  # the export process checks every second whether its sweep process is alive
PICKLE_SUFFIXES = (".pkl", ".pickle", ".pth", ".pt")


# --- processes ------------------------------------------------------------------------------------------------


def base_env(**extra: str) -> dict[str, str]:
    """The user's environment without tracking-server overrides or proxies, plus `extra`."""
    dropped = {"MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"}
    env = {k: v for k, v in os.environ.items() if k.upper() not in dropped}
    env |= {
        "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    return env | extra


def _default_sigint() -> None:
    """Give the child the default SIGINT disposition (Python then raises KeyboardInterrupt on it), as in a
    terminal, even when this test process was started with SIGINT ignored (e.g. as a background job)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    elapsed_s: float

    def describe(self) -> str:
        return (
            f"`{' '.join(self.argv)}` exited {self.returncode} after {self.elapsed_s:.1f}s\n"
            f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-4000:]}"
        )

    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


STARTED: list[Proc] = []


@dataclass
class Proc:
    """A running CLI process whose stdout and stderr go to files (tqdm writes a lot to stderr)."""

    argv: list[str]
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path
    started: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait(self, timeout: float = PROCESS_TIMEOUT_S) -> Result:
        try:
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            pytest.fail(f"`{' '.join(self.argv)}` did not end within {timeout}s\n{self.err.read_text()[-4000:]}")
        return Result(
            self.argv,
            self.popen.returncode,
            self.out.read_text(errors="replace"),
            self.err.read_text(errors="replace"),
            time.monotonic() - self.started,
        )


@dataclass
class Workdir:
    """One project checkout's worth of state: params.yaml, reports/ and (unless shared) the MLflow store."""

    root: Path
    params: dict[str, Any]
    launched: int = field(default=0)

    @property
    def params_path(self) -> Path:
        return self.root / "params.yaml"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def uri(self) -> str:
        return self.params["tracking"]["mlflow_uri"]

    @property
    def db(self) -> Path:
        return Path(self.uri.removeprefix("sqlite:///"))

    @property
    def experiment(self) -> str:
        return self.params["tracking"]["experiment"]

    def client(self, uri: str | None = None) -> MlflowClient:
        return MlflowClient(tracking_uri=uri or self.uri, registry_uri=uri or self.uri)

    def report(self, name: str) -> Any:
        return json.loads((self.reports / name).read_text())

    def start(self, command: str, env: dict[str, str] | None = None) -> Proc:
        self.launched += 1
        stem = self.root / f"{command}-{self.launched}"
        argv = [
            sys.executable,
            "-m",
            "fashion_mlops",
            "--params",
            str(self.params_path),
            "--reports",
            str(self.reports),
            command,
        ]
        out, err = stem.with_suffix(".stdout"), stem.with_suffix(".stderr")
        with out.open("wb") as stdout, err.open("wb") as stderr:
            popen = subprocess.Popen(
                argv,
                cwd=self.root,
                env=env or base_env(),
                stdout=stdout,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                preexec_fn=_default_sigint,  # no threads of ours run while it forks
                start_new_session=True,  # its own process group, with its workers: see stop_leftover_processes
            )
        proc = Proc(argv, popen, out, err, time.monotonic())
        STARTED.append(proc)
        return proc

    def run(self, command: str, env: dict[str, str] | None = None, expect: int | None = 0) -> Result:
        result = self.start(command, env).wait()
        if expect is not None:
            assert result.returncode == expect, result.describe()
        return result


def make_workdir(root: Path, dataset: Path, raw_dir: Path, **overrides: Any) -> Workdir:
    """tiny_params on the shared, already downloaded data, one training thread, the 4-cell grid, EPOCHS epochs."""
    root.mkdir(parents=True)
    settings = {
        "data.dir": str(raw_dir),
        "train.threads": 1,
        "train.epochs": EPOCHS,
        "sweep.grid": {k: list(v) for k, v in GRID.items()},
    } | overrides
    params = tiny_params(dataset, root, **settings)
    write_params(root / "params.yaml", params)
    return Workdir(root, params)


def run_together(*started: Proc) -> list[Result]:
    return [proc.wait() for proc in started]


# --- reading stores -------------------------------------------------------------------------------------------


CELL_RUNS = """
SELECT COUNT(*) FROM runs r
JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = ? AND t.value = 'cell'
"""


def any_cell(db: Path) -> bool:
    """Whether a cell run exists, read through a read-only connection while a sweep writes the store."""
    if not db.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=5)) as connection:
            (count,) = connection.execute(CELL_RUNS, (tags.KIND,)).fetchone()
    except sqlite3.Error:  # the schema is still being created, or a writer holds the lock right now
        return False
    return count > 0


def epochs_done(proc: Proc) -> int:
    """Epochs the sweep's progress bar has counted so far (0 before it shows), read from its stderr file.

    The training process's own progress, not the store's: a run turns FINISHED once its model is exported.
    """
    counts = PROGRESS.findall(proc.err.read_text(errors="replace")) if proc.err.exists() else []
    return int(counts[-1]) if counts else 0


def one_trained_and_one_mid_training(proc: Proc) -> bool:
    """Serial sweep: the first cell is trained and the second has finished some, not all, of its epochs."""
    return EPOCHS < epochs_done(proc) < 2 * EPOCHS


def wait_until(
    condition: Callable[[], bool], procs: list[Proc], what: str, timeout: float, every_s: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            if proc.popen.poll() is not None:
                result = proc.wait()
                pytest.fail(f"the process ended before {what}:\n{result.describe()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every_s)


def all_runs(client: MlflowClient, experiment: str) -> list[Run]:
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"experiment {experiment!r} does not exist"
    return client.search_runs([found.experiment_id], run_view_type=ViewType.ALL, max_results=1000)


def sweeps(runs: list[Run]) -> list[Run]:
    """The sweep parent runs, oldest first."""
    return sorted((r for r in runs if r.data.tags.get(tags.KIND) == "sweep"), key=lambda r: r.info.start_time)


def children(runs: list[Run], parent: Run) -> list[Run]:
    return [r for r in runs if r.data.tags.get(tags.PARENT) == parent.info.run_id]


def running(runs: list[Run]) -> list[str]:
    return [f"{r.info.run_name} ({r.info.run_id})" for r in runs if r.info.status == "RUNNING"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def stable_rows(path: Path) -> list[dict[str, str]]:
    """sweep.csv as text, without the columns that legitimately differ between two identical sweeps."""
    return [{k: v for k, v in row.items() if k not in VOLATILE_COLUMNS} for row in read_csv(path)]


def load_events(directory: Path) -> event_accumulator.EventAccumulator:
    guidance = dict.fromkeys(event_accumulator.DEFAULT_SIZE_GUIDANCE, 0)
    return event_accumulator.EventAccumulator(str(directory), size_guidance=guidance).Reload()


# --- shared set-ups -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def stop_leftover_processes() -> Iterator[None]:
    """A failed test must not leave its sweeps (and their worker processes) training in the background."""
    yield
    for proc in STARTED:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.popen.wait()


@pytest.fixture(scope="module")
def raw_dir(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample dataset as the download stage leaves it, shared read-only by every work directory."""
    raw = tmp_path_factory.mktemp("raw")
    download_dataset(load_manifest(sample_dataset / "manifest.json"), [str(sample_dataset)], raw)
    return raw


@pytest.fixture(scope="module")
def new_workdir(sample_dataset: Path, raw_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    def make(name: str, **overrides: Any) -> Workdir:
        return make_workdir(tmp_path_factory.mktemp(name) / "work", sample_dataset, raw_dir, **overrides)

    return make


@dataclass(frozen=True)
class Reference:
    """Two uninterrupted serial sweeps of the same params in two fresh work directories."""

    first: Workdir
    second: Workdir


@pytest.fixture(scope="module")
def fresh_sweeps(new_workdir) -> dict[str, Workdir]:
    """Three uninterrupted sweeps of the 4-cell grid, side by side, each in a fresh work directory and store:
    two serial ones and one with sweep.workers: 2 (still one thread per run)."""
    works = {
        "serial-a": new_workdir("reference-a"),
        "serial-b": new_workdir("reference-b"),
        "workers": new_workdir("parallel", **{"sweep.workers": 2}),
    }
    for result in run_together(*(work.start("sweep") for work in works.values())):
        assert result.returncode == 0, result.describe()
    return works


@pytest.fixture(scope="module")
def reference(fresh_sweeps: dict[str, Workdir]) -> Reference:
    return Reference(fresh_sweeps["serial-a"], fresh_sweeps["serial-b"])


@pytest.fixture(scope="module")
def parallel_sweep(fresh_sweeps: dict[str, Workdir]) -> Workdir:
    return fresh_sweeps["workers"]


# --- 1. diverging runs ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diverged(new_workdir) -> dict[str, tuple[Workdir, Result]]:
    """Two sweeps side by side: one with a diverging cell beside a sane one, one where every cell diverges."""
    works = {
        "one": new_workdir("diverge-one", **DIVERGING, **{"sweep.grid": {"lr": [0.01, 10.0]}}),
        "all": new_workdir(
            "diverge-all", **DIVERGING, **{"train.lr": 10.0, "sweep.grid": {"weight_decay": [0.5, 0.9]}}
        ),
    }
    results = run_together(*(work.start("sweep") for work in works.values()))
    return {name: (work, result) for (name, work), result in zip(works.items(), results, strict=True)}


def test_a_diverging_cell_fails_alone_and_the_sweep_picks_the_finished_one(diverged) -> None:
    work, result = diverged["one"]

    assert result.returncode == 0, result.describe()
    runs = all_runs(work.client(), work.experiment)
    assert not running(runs)
    (parent,) = sweeps(runs)
    assert parent.info.status == "FINISHED"
    cells = {c.info.run_name: c for c in children(runs, parent)}
    fine, diverged = cells["run-00-lr=0.01"], cells["run-01-lr=10.0"]
    assert diverged.info.status == "FAILED"
    failure = diverged.data.tags.get(tags.FAILURE, "")
    assert "diverged" in failure and ("nan" in failure or "inf" in failure), failure
    assert tags.MODEL_URI not in diverged.data.tags
    assert fine.info.status == "FINISHED"
    best = work.report("best_run.json")
    assert (best["run_name"], best["run_id"]) == ("run-00-lr=0.01", fine.info.run_id)
    sweep = work.report("sweep.json")
    assert (sweep["finished_runs"], sweep["total_runs"]) == (1, 2)
    assert sweep["runs"]["run-01-lr=10.0"]["status"] == "FAILED"
    assert "FAILED" in result.stdout and "Traceback" not in result.stderr


def test_a_sweep_whose_every_cell_diverges_fails_with_one_line_and_registers_nothing(diverged) -> None:
    work, result = diverged["all"]

    assert result.returncode != 0, result.describe()
    assert "Traceback" not in result.stderr, result.stderr
    errors = result.error_lines()
    assert len(errors) == 1, result.stderr
    assert "no grid cell finished" in errors[0] and "diverged" in errors[0], errors[0]
    client = work.client()
    runs = all_runs(client, work.experiment)
    assert not running(runs)
    (parent,) = sweeps(runs)
    assert parent.info.status == "FAILED"
    assert [c.info.status for c in children(runs, parent)] == ["FAILED", "FAILED"]
    assert client.search_registered_models() == []
    assert not (work.reports / "best_run.json").exists()


# --- 2. interruption and resume -------------------------------------------------------------------------------


@dataclass
class Interrupted:
    """A sweep signalled in the middle of training, its store as the signal left it, then a rerun."""

    work: Workdir
    first: Result
    after_signal: list[Run]
    reports_after_signal: list[str]
    rerun: Result
    seconds_to_exit: float  # from the signal to the process's exit


INTERRUPTS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}


@pytest.fixture(scope="module")
def interrupted(new_workdir) -> dict[str, Interrupted]:
    """For SIGTERM and SIGINT side by side: start the 4-cell sweep, signal it once a cell has finished training
    and a later one has logged an epoch (so the signal lands inside `train`), snapshot the store, then run the
    same sweep again to completion.

    A cell's run turns FINISHED once the export process has logged its model, a little after its training ends,
    by when every cell of this tiny grid may be trained; waiting for a FINISHED run would let the signal land
    where no cell is training. The sweep waits for the models already sent before it exits, so the rerun still
    has FINISHED cells to reuse."""
    works = {name: new_workdir(f"interrupt-{name}") for name in INTERRUPTS}
    procs = {name: work.start("sweep") for name, work in works.items()}
    signalled: dict[str, float] = {}
    exited: dict[str, float] = {}
    deadline = time.monotonic() + PROCESS_TIMEOUT_S
    while len(exited) < len(procs):
        for name, proc in procs.items():
            ended = proc.popen.poll() is not None
            if name not in signalled:
                if ended:
                    pytest.fail(f"the {name} sweep ended before it was signalled:\n{proc.wait().describe()}")
                if one_trained_and_one_mid_training(proc):
                    proc.popen.send_signal(INTERRUPTS[name])
                    signalled[name] = time.monotonic()
            elif name not in exited and ended:
                exited[name] = time.monotonic()
        if time.monotonic() > deadline:
            pytest.fail(f"signalled {sorted(signalled)}, exited {sorted(exited)} after {PROCESS_TIMEOUT_S}s")
        time.sleep(0.02)
    firsts = {name: proc.wait() for name, proc in procs.items()}
    snapshots = {name: all_runs(work.client(), work.experiment) for name, work in works.items()}
    reports = {
        name: sorted(p.name for p in work.reports.glob("*")) if work.reports.exists() else []
        for name, work in works.items()
    }
    reruns = dict(zip(works, run_together(*(work.start("sweep") for work in works.values())), strict=True))
    return {
        name: Interrupted(
            works[name], firsts[name], snapshots[name], reports[name], reruns[name], exited[name] - signalled[name]
        )
        for name in works
    }


@pytest.mark.parametrize("signame", INTERRUPTS)
def test_an_interrupted_sweep_exits_130_and_leaves_no_run_running(interrupted, signame: str) -> None:
    case = interrupted[signame]

    assert case.first.returncode == 130, case.first.describe()
    assert case.seconds_to_exit < INTERRUPT_EXIT_LIMIT_S, f"exited {case.seconds_to_exit:.0f}s after {signame}"
    assert "interrupted" in case.first.stderr and "Traceback" not in case.first.stderr, case.first.stderr
    assert not running(case.after_signal), f"RUNNING after {signame}: {running(case.after_signal)}"
    (parent,) = sweeps(case.after_signal)
    assert parent.info.status == "KILLED"
    statuses = sorted(c.info.status for c in children(case.after_signal, parent))
    assert statuses.count("KILLED") == 1, statuses
    assert statuses.count("FINISHED") >= 1, statuses
    killed = next(c for c in children(case.after_signal, parent) if c.info.status == "KILLED")
    assert killed.data.tags.get(tags.FAILURE) == "interrupted"
    assert case.reports_after_signal == [], f"an interrupted sweep wrote reports: {case.reports_after_signal}"


@pytest.mark.parametrize("signame", INTERRUPTS)
def test_an_interrupted_runs_tensorboard_events_are_flushed(interrupted, signame: str) -> None:
    case = interrupted[signame]
    client = case.work.client()
    (parent,) = sweeps(case.after_signal)
    for child in children(case.after_signal, parent):
        directory = Path(child.data.tags[tags.TENSORBOARD])
        assert list(directory.glob("events.out.tfevents.*")), f"{child.info.run_name}: no event file"
        events = load_events(directory)
        logged = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_accuracy"))
        written = [e.step for e in events.Scalars("accuracy/val")] if "accuracy/val" in events.Tags()["scalars"] else []
        if child.info.status == "FINISHED":
            assert written == logged == list(range(1, EPOCHS + 1)), child.info.run_name
        else:  # the signal may land between the MLflow and the TensorBoard write of one epoch, not more
            assert written == logged[: len(written)] and len(logged) - len(written) <= 1, (logged, written)
        if written:  # written at the run's start, before its first epoch
            assert "samples/train" in events.Tags()["images"], child.info.run_name
            assert events.Tags()["graph"], child.info.run_name


@pytest.mark.parametrize("signame", INTERRUPTS)
def test_rerunning_an_interrupted_sweep_reuses_finished_cells_and_matches_an_uninterrupted_one(
    interrupted, reference: Reference, signame: str
) -> None:
    case = interrupted[signame]
    assert case.rerun.returncode == 0, case.rerun.describe()
    runs = all_runs(case.work.client(), case.work.experiment)
    assert not running(runs)
    old, new = sweeps(runs)
    finished_before = {c.info.run_id for c in children(case.after_signal, old) if c.info.status == "FINISHED"}
    new_cells = children(runs, new)
    assert new.info.status == "FINISHED" and len(new_cells) == N_CELLS
    assert all(c.info.status == "FINISHED" for c in new_cells)
    reused = {c.data.tags[tags.REUSED_FROM] for c in new_cells if tags.REUSED_FROM in c.data.tags}
    assert reused == finished_before
    assert case.rerun.stdout.count("(reused)") == len(finished_before), case.rerun.stdout
    assert stable_rows(case.work.reports / "sweep.csv") == stable_rows(reference.first.reports / "sweep.csv")
    assert case.work.report("best_run.json")["run_name"] == reference.first.report("best_run.json")["run_name"]


def test_sigterm_to_a_sweep_with_two_workers_leaves_no_run_running_and_no_worker_alive(new_workdir) -> None:
    epochs = 100
    work = new_workdir("interrupt-workers", **{"sweep.workers": 2, "train.epochs": epochs})
    proc = work.start("sweep")
    # 4 cells of 100 epochs on 2 workers: with at most 100 epochs counted (the count trails the workers by up to
    # the interval the sweep drains their events at), both workers are still in their first cells. With 6 epochs
    # a cell this window was shorter than one drain on a fast machine, and CI once saw the count jump past it.
    mid_sweep = lambda: 0 < epochs_done(proc) <= epochs  # noqa: E731
    wait_until(mid_sweep, [proc], "a cell mid-training", SIGNAL_WAIT_TIMEOUT_S)
    workers = psutil.Process(proc.pid).children(recursive=True)  # the workers and the export process

    proc.popen.send_signal(signal.SIGTERM)
    result = proc.wait(timeout=120)

    assert result.returncode == 130, result.describe()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"worker processes outlived the sweep: {[p.pid for p in alive]}"
    runs = all_runs(work.client(), work.experiment)
    assert not running(runs), f"RUNNING after SIGTERM: {running(runs)}"
    (parent,) = sweeps(runs)
    assert parent.info.status == "KILLED"
    assert "KILLED" in {c.info.status for c in children(runs, parent)}


def test_sigterm_just_after_a_cell_run_is_created_leaves_no_run_running(new_workdir) -> None:
    """The moment between creating a cell's MLflow run and logging its first params: poll every 2 ms and send
    SIGTERM as soon as the run exists. Where exactly it lands varies; no landing place may leave it RUNNING."""
    work = new_workdir("interrupt-start", **{"sweep.grid": {"lr": [0.01]}, "train.epochs": 1})
    proc = work.start("sweep")
    wait_until(lambda: any_cell(work.db), [proc], "a cell run", SIGNAL_WAIT_TIMEOUT_S, every_s=0.002)

    proc.popen.send_signal(signal.SIGTERM)
    result = proc.wait()

    assert result.returncode == 130, result.describe()
    runs = all_runs(work.client(), work.experiment)
    (parent,) = sweeps(runs)
    cells = children(runs, parent)
    assert not running(runs), (
        f"RUNNING after SIGTERM: {running(runs)}; the cell had logged params: {[bool(c.data.params) for c in cells]}"
    )
    assert parent.info.status == "KILLED"
    # the one epoch may have ended before the signal: then the cell is FINISHED with its final metrics (its model
    # exported before the sweep exits), otherwise KILLED
    (cell,) = cells
    trained = "final_val_accuracy" in cell.data.metrics
    assert cell.info.status == ("FINISHED" if trained else "KILLED"), (cell.info.status, cell.data.metrics)


def test_resume_reuses_a_run_only_while_its_model_and_tensorboard_events_are_there(new_workdir) -> None:
    """A deleted `runs/` or model directory means training the cell again, not a reused run pointing at nothing."""
    work = new_workdir("resume-needs-files", **{"sweep.grid": {}, "train.epochs": 2})
    work.run("sweep")

    def last_cell() -> Run:
        runs = all_runs(work.client(), work.experiment)
        (cell,) = children(runs, sweeps(runs)[-1])
        return cell

    work.run("sweep")
    reused = last_cell()
    assert reused.data.tags.get(tags.REUSED_FROM), "an intact earlier run was not reused"

    shutil.rmtree(work.root / "runs")
    work.run("sweep")
    retrained = last_cell()
    assert tags.REUSED_FROM not in retrained.data.tags, "reused a run whose TensorBoard events are gone"
    assert list((work.root / retrained.data.tags[tags.TENSORBOARD]).glob("events.out.tfevents.*"))

    model = work.client().get_logged_model(retrained.data.tags[tags.MODEL_URI].removeprefix("models:/"))
    shutil.rmtree(model.artifact_location.removeprefix("file://"))
    work.run("sweep")
    assert tags.REUSED_FROM not in last_cell().data.tags, "reused a run whose model files are gone"


# --- 3. SIGKILL -----------------------------------------------------------------------------------------------


def test_when_the_sweep_process_is_sigkilled_its_export_process_ends_the_runs_killed(new_workdir) -> None:
    work = new_workdir("sigkill-main", **{"sweep.grid": {"lr": [0.01]}, "train.epochs": 1})
    proc = work.start("sweep")
    wait_until(lambda: any_cell(work.db), [proc], "a cell run", SIGNAL_WAIT_TIMEOUT_S)

    proc.popen.send_signal(signal.SIGKILL)
    assert proc.wait().returncode == -signal.SIGKILL
    client = work.client()
    wait_until(
        lambda: not running(all_runs(client, work.experiment)), [], "the exporter ending the runs", EXPORTER_NOTICE_S
    )

    runs = all_runs(client, work.experiment)
    (parent,) = sweeps(runs)
    for run in [parent, *children(runs, parent)]:
        assert run.info.status == "KILLED", run.info.run_name
        assert f"sweep process {proc.pid} died" in run.data.tags.get(tags.FAILURE, ""), run.data.tags
    assert not child_processes_of(proc.pid), "the export process outlived its sweep"


def test_runs_left_running_when_the_whole_process_group_is_sigkilled_are_marked_killed_by_the_next_sweep(
    new_workdir,
) -> None:
    work = new_workdir("sigkill-group", **{"sweep.grid": {"lr": [0.01]}, "train.epochs": 1})
    proc = work.start("sweep")
    wait_until(lambda: any_cell(work.db), [proc], "a cell run", SIGNAL_WAIT_TIMEOUT_S)

    helpers = child_processes_of(proc.pid)
    for pid in [proc.pid, *helpers]:
        os.kill(pid, signal.SIGKILL)
    assert proc.wait().returncode == -signal.SIGKILL
    client = work.client()
    orphans = running(all_runs(client, work.experiment))
    assert len(orphans) == 2, f"expected the sweep and its cell RUNNING after SIGKILL, got {orphans}"

    work.run("sweep")

    runs = all_runs(client, work.experiment)
    assert not running(runs)
    old, new = sweeps(runs)
    for run in [old, *children(runs, old)]:
        assert run.info.status == "KILLED", run.info.run_name
        owner = run.data.tags[tags.PID]
        assert int(owner) == proc.pid, f"runs are owned by the sweep process {proc.pid}, not {owner}"
        assert f"process {owner}" in run.data.tags.get(tags.FAILURE, ""), run.data.tags.get(tags.FAILURE)
        assert "died" in run.data.tags[tags.FAILURE]
    assert new.info.status == "FINISHED"
    assert [c.info.status for c in children(runs, new)] == ["FINISHED"]


def child_processes_of(pid: int) -> list[int]:
    """The pids of `pid`'s child processes (the sweep's export process), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


# --- 4. determinism -------------------------------------------------------------------------------------------


def test_two_fresh_sweeps_give_bit_identical_metrics_and_the_same_best_run(reference: Reference) -> None:
    first, second = (stable_rows(w.reports / "sweep.csv") for w in (reference.first, reference.second))
    assert len(first) == N_CELLS * EPOCHS
    assert first == second
    assert reference.first.report("best_run.json")["run_name"] == reference.second.report("best_run.json")["run_name"]


def test_a_sweep_with_two_workers_gives_the_serial_sweeps_metrics(reference: Reference, parallel_sweep) -> None:
    serial = stable_rows(reference.first.reports / "sweep.csv")
    parallel = stable_rows(parallel_sweep.reports / "sweep.csv")
    assert parallel == serial
    assert parallel_sweep.report("best_run.json")["run_name"] == reference.first.report("best_run.json")["run_name"]


# --- 5. the registry ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    evaluation: dict[str, Any]
    holder: str  # the version holding the alias after this evaluation
    stdout: str


def sharing_store(new_workdir, name: str, store: Workdir, **overrides: Any) -> Workdir:
    """A work directory of its own whose params point at `store`'s MLflow store (one absolute sqlite:/// path)."""
    work = new_workdir(name, **overrides)
    work.params["tracking"] = dict(store.params["tracking"])
    write_params(work.params_path, work.params)
    return work


def write_best_run(work: Workdir, run: Run, model_uri: str, val_accuracy: float, val_loss: float) -> None:
    """The best_run.json a sweep would have written for `run`, so `evaluate` can be pointed at any model."""
    best = {
        "run_name": run.info.run_name,
        "run_id": run.info.run_id,
        "sweep_run_id": run.data.tags.get(tags.PARENT),
        "model_uri": model_uri,
        "arch": "simple_cnn",
        "val_accuracy": val_accuracy,
        "val_loss": val_loss,
        "params": dict(run.data.params),
        "reused_from": None,
    }
    work.reports.mkdir(parents=True, exist_ok=True)
    (work.reports / "best_run.json").write_text(json.dumps(best))


def copy_of_best_model(store: Workdir, work: Workdir) -> None:
    """Log the files of `store`'s best model again, under a new run: a different model URI with the same
    weights, so its test accuracy equals the original's exactly."""
    client = store.client()
    best = store.report("best_run.json")
    model = client.get_logged_model(best["model_uri"].removeprefix("models:/"))
    experiment = client.get_experiment_by_name(store.experiment).experiment_id
    copy = client.create_run(experiment, run_name="copy-of-best")
    client.log_artifacts(copy.info.run_id, model.artifact_location.removeprefix("file://"), artifact_path="model")
    client.set_terminated(copy.info.run_id)
    copy = client.get_run(copy.info.run_id)
    write_best_run(work, copy, f"runs:/{copy.info.run_id}/model", best["val_accuracy"], best["val_loss"])


@pytest.fixture(scope="module")
def registry_steps(reference: Reference, new_workdir) -> dict[str, Step]:
    """In the first reference store: evaluate its best model; then a byte-identical copy of that model under
    another URI (equal accuracy); then the model of a 1-epoch, tiny-lr sweep (worse)."""
    store = reference.first
    equal = sharing_store(new_workdir, "equal", store)
    worse = sharing_store(new_workdir, "worse", store, **{"train.epochs": 1, "train.lr": 1e-5, "sweep.grid": {}})
    worse_sweep = worse.start("sweep")  # trains while the first two evaluations run
    client = store.client()
    registry = store.params["registry"]
    steps = {}
    for name, work in (("first", store), ("equal", equal), ("worse", worse)):
        if name == "equal":
            copy_of_best_model(store, equal)
        if name == "worse":
            result = worse_sweep.wait()
            assert result.returncode == 0, result.describe()
        result = work.run("evaluate")
        holder = str(client.get_model_version_by_alias(registry["model_name"], registry["alias"]).version)
        steps[name] = Step(work.report("evaluation.json"), holder, result.stdout)
    return steps


def test_the_first_evaluation_registers_and_promotes(registry_steps) -> None:
    first = registry_steps["first"]
    assert first.evaluation["promoted"] is True
    assert first.evaluation["model_version"] == 1 and first.holder == "1"
    assert "promoted to @champion" in first.stdout


def test_an_equally_accurate_candidate_is_registered_but_does_not_take_the_alias(registry_steps) -> None:
    first, equal = registry_steps["first"], registry_steps["equal"]
    assert equal.evaluation["test_accuracy"] == first.evaluation["test_accuracy"]
    assert equal.evaluation["model_uri"] != first.evaluation["model_uri"]
    assert equal.evaluation["model_version"] == 2
    assert equal.evaluation["promoted"] is False and equal.holder == "1"


def test_a_worse_candidate_is_registered_but_does_not_take_the_alias(registry_steps, reference: Reference) -> None:
    first, worse = registry_steps["first"], registry_steps["worse"]
    assert worse.evaluation["test_accuracy"] < first.evaluation["test_accuracy"]
    assert worse.evaluation["model_version"] == 3
    assert worse.evaluation["promoted"] is False and worse.holder == "1"
    assert worse.evaluation["previous_champion"]["version"] == 1
    versions = reference.first.client().search_model_versions(
        f"name = '{reference.first.params['registry']['model_name']}'"
    )
    assert sorted(int(v.version) for v in versions) == [1, 2, 3]


RACE_ROUNDS = 3  # without the registry lock, each round's worse contender keeps the alias about half the time


@pytest.mark.parametrize("round_", range(RACE_ROUNDS))
def test_two_evaluations_racing_on_one_store_both_register_and_the_better_holds_the_alias(
    reference: Reference, registry_steps, new_workdir, round_: int
) -> None:
    """Two work directories, one SQLite store, a fresh registered model: both processes race to create it,
    to register a version and to move the alias, starting at the same moment. The contenders are the sweep's
    best model and the 1-epoch, tiny-lr one, whose test accuracies differ: with tied scores a lost race (the
    alias left on the worse model) could not be told from a won one. Who wins an unguarded race is chance, so
    the race is run in several rounds, each on a registered model of its own."""
    store = reference.first
    client = store.client()
    model_name = f"race-cnn-{round_}"
    contenders = []
    for name in ("first", "worse"):
        evaluation = registry_steps[name].evaluation
        run = client.get_run(evaluation["run_id"])
        work = sharing_store(new_workdir, f"race-{round_}-{name}", store, **{"registry.model_name": model_name})
        write_best_run(work, run, evaluation["model_uri"], evaluation["val_accuracy"], run.data.metrics["val_loss"])
        contenders.append(work)

    results = run_together(*(work.start("evaluate") for work in contenders))

    for result in results:
        assert result.returncode == 0, result.describe()
    evaluations = [work.report("evaluation.json") for work in contenders]
    numbers = sorted(e["model_version"] for e in evaluations)
    assert numbers == [1, 2], f"lost or duplicated versions: {numbers}"
    registered = client.search_model_versions(f"name = '{model_name}'")
    assert sorted(int(v.version) for v in registered) == [1, 2]
    holder = client.get_model_version_by_alias(model_name, "champion")
    assert len({e["test_accuracy"] for e in evaluations}) == 2, f"the contenders tie: {evaluations}"
    best_accuracy = max(e["test_accuracy"] for e in evaluations)
    holder_accuracy = next(e["test_accuracy"] for e in evaluations if e["model_version"] == int(holder.version))
    assert holder_accuracy == best_accuracy, evaluations
    assert sum(e["promoted"] for e in evaluations) >= 1


def test_a_candidate_measured_on_other_test_data_never_takes_the_alias(
    reference: Reference, registry_steps, new_workdir, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The README's smoke-run data with the real registry name must not unseat a champion measured on other data:
    the real champion would score near chance on synthetic shapes, and any candidate would look better."""
    from fashion_mlops.data.sample import write_sample_dataset

    store = reference.first
    other = tmp_path_factory.mktemp("other-data")
    manifest = write_sample_dataset(other / "source", n_train=200, n_test=100, seed=1)
    download_dataset(load_manifest(manifest), [str(other / "source")], other / "raw")
    work = sharing_store(
        new_workdir,
        "other-data",
        store,
        **{"data.manifest": str(manifest), "data.sources": [str(other / "source")], "data.dir": str(other / "raw")},
    )
    work.params["data"]["val_size"] = 20
    write_params(work.params_path, work.params)
    evaluation = registry_steps["worse"].evaluation
    run = store.client().get_run(evaluation["run_id"])
    write_best_run(work, run, evaluation["model_uri"], evaluation["val_accuracy"], run.data.metrics["val_loss"])
    registry = store.params["registry"]
    client = store.client()
    versions_before = sorted(v.version for v in client.search_model_versions(f"name = '{registry['model_name']}'"))

    result = work.run("evaluate", expect=None)

    assert result.returncode == 1, result.describe()
    errors = result.error_lines()
    assert len(errors) == 1 and "measured on" in errors[0] and "registry.model_name" in errors[0], result.stderr
    holder = client.get_model_version_by_alias(registry["model_name"], registry["alias"])
    assert str(holder.version) == registry_steps["worse"].holder
    after = sorted(v.version for v in client.search_model_versions(f"name = '{registry['model_name']}'"))
    assert after == versions_before, "a version was registered"
    assert not (work.reports / "evaluation.json").exists()


def test_every_registered_version_records_the_test_data_it_was_measured_on(
    reference: Reference, registry_steps
) -> None:
    registry = reference.first.params["registry"]
    versions = reference.first.client().search_model_versions(f"name = '{registry['model_name']}'")
    digests = {v.tags.get(tags.TEST_DATA_DIGEST) for v in versions}
    assert len(digests) == 1 and None not in digests, digests
    assert registry_steps["first"].evaluation["test_data"]["digest"] in digests


def test_the_logged_model_loads_and_scores_what_evaluate_measured(reference: Reference, registry_steps) -> None:
    import torch

    from fashion_mlops.data.splits import load_split
    from fashion_mlops.train import predict_logits

    torch.set_num_threads(1)
    uri = reference.first.report("best_run.json")["model_uri"]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(reference.first.uri)
    try:
        model = mlflow.pytorch.load_model(uri)
    finally:
        mlflow.set_tracking_uri(previous)
    params = reference.first.params
    test = load_split(load_manifest(params["data"]["manifest"]), Path(params["data"]["dir"]), "test")
    predictions = predict_logits(model, test.images, batch_size=50).argmax(1)
    accuracy = (predictions == test.labels).float().mean().item()
    assert accuracy == registry_steps["first"].evaluation["test_accuracy"]


# --- 6. tracking servers --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    uri: str
    port: int
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def running_mlflow_server(root: Path) -> Iterator[Server]:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend under `root`, stopped (by process group) on exit."""
    port = free_port()
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [
            str(VENV_BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
        ],
        cwd=root,
        env=base_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the server's workers are stopped with it
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{uri}/health", process, root / "server.log")
        yield Server(uri, port, process)
    finally:
        stop_group(process)
        log.close()


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running_mlflow_server(tmp_path_factory.mktemp("server")) as server:
        yield server


def test_a_sweep_and_evaluate_tracked_on_a_server_are_visible_through_it(mlflow_server: Server, new_workdir) -> None:
    work = new_workdir("server", **{"sweep.grid": {"lr": [0.01]}, "train.epochs": 1})
    env = base_env(MLFLOW_TRACKING_URI=mlflow_server.uri)

    work.run("sweep", env=env)
    work.run("evaluate", env=env)

    assert not work.db.exists(), "MLFLOW_TRACKING_URI was set, yet the sweep wrote the params' SQLite store"
    client = work.client(mlflow_server.uri)
    runs = all_runs(client, work.experiment)
    (parent,) = sweeps(runs)
    cells = children(runs, parent)
    assert parent.info.status == "FINISHED" and [c.info.status for c in cells] == ["FINISHED"]
    registry = work.params["registry"]
    holder = client.get_model_version_by_alias(registry["model_name"], registry["alias"])
    assert holder.run_id == cells[0].info.run_id == work.report("best_run.json")["run_id"]
    assert int(holder.version) == work.report("evaluation.json")["model_version"]


def listening_addresses(port: int) -> set[str]:
    return {
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def makefile_command(target: str, **variables: str) -> str:
    """The command line `make <target>` runs, as make itself prints it (dry run, with the given variables)."""
    assignments = [f"{k}={v}" for k, v in variables.items()]
    printed = subprocess.run(
        ["make", "-n", target, *assignments], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    (command,) = [line for line in printed.splitlines() if "--host" in line]
    return command


@pytest.mark.parametrize(
    ("target", "port_variable", "health"),
    [("ui", "UI_PORT", "/health"), ("tensorboard", "TENSORBOARD_PORT", "/")],
)
def test_make_ui_and_make_tensorboard_listen_on_loopback_only(
    target: str, port_variable: str, health: str, tmp_path: Path
) -> None:
    """The Makefile's own commands, run as make gives them, bind 127.0.0.1 and nothing else."""
    port = free_port()
    command = makefile_command(target, **{port_variable: str(port)})
    (tmp_path / "runs").mkdir()
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # the Makefile's line, run by a shell as make runs it
            ["/bin/sh", "-c", command],
            cwd=tmp_path,
            env=base_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_http(f"http://127.0.0.1:{port}{health}", process, log)
        assert listening_addresses(port) == {"127.0.0.1"}, command
    finally:
        stop_group(process)


def readme_commands(readme: str) -> list[str]:
    """The README's commands: each line of its fenced code blocks, and each inline code span that has options
    (`mlflow models serve` alone names the tool; `mlflow models serve -m ...` is a command to run)."""
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", readme, flags=re.MULTILINE | re.DOTALL)
    lines = [line for block in blocks for line in block.splitlines()]
    spans = [span for span in re.findall(r"`([^`\n]+)`", readme) if re.search(r"\s-{1,2}[a-z]", span)]
    return lines + spans


def test_every_server_command_in_the_readme_binds_loopback() -> None:
    server = re.compile(r"\b(mlflow (ui|server|models serve)|tensorboard --logdir)\b")
    commands = [c for c in readme_commands((REPO_ROOT / "README.md").read_text()) if server.search(c)]
    assert any("models serve" in c for c in commands), "the README shows no serving command"
    for command in commands:
        assert "--host 127.0.0.1" in command, command


def test_an_unreachable_tracking_server_fails_fast_with_one_line_and_leaves_nothing(new_workdir) -> None:
    closed = free_port()
    work = new_workdir("unreachable", **{"sweep.grid": {"lr": [0.01]}})
    work.params["tracking"]["mlflow_uri"] = f"http://127.0.0.1:{closed}"
    write_params(work.params_path, work.params)

    result = work.run("sweep", expect=None)
    validate = work.run("validate", expect=None)

    assert result.returncode == 2, result.describe()  # the README's exit code for what is wrong before a run
    assert validate.returncode == 2 and "unreachable" in validate.stderr, validate.describe()
    assert result.elapsed_s < UNREACHABLE_LIMIT_S, result.describe()
    assert not (work.reports.exists() and any(work.reports.iterdir())), "reports were written"
    assert not (work.root / "runs").exists(), "a TensorBoard runs/ directory was created"
    assert not (work.root / "mlruns").exists(), "an artifact directory was created"
    assert "Traceback" not in result.stderr, result.stderr
    errors = result.error_lines()
    assert len(errors) == 1 and "unreachable" in errors[0], result.stderr
    assert f"127.0.0.1:{closed}" in errors[0]


def test_a_tracking_server_that_dies_mid_sweep_stops_the_sweep_within_a_minute_with_one_line(
    new_workdir, tmp_path_factory: pytest.TempPathFactory
) -> None:
    work = new_workdir("server-dies", **{"sweep.grid": {"lr": [0.01, 0.003]}, "train.epochs": 40})
    with running_mlflow_server(tmp_path_factory.mktemp("dying-server")) as server:
        proc = work.start("sweep", env=base_env(MLFLOW_TRACKING_URI=server.uri))
        wait_until(lambda: epochs_done(proc) >= 2, [proc], "two epochs", SIGNAL_WAIT_TIMEOUT_S)
        stop_group(server.process, signal.SIGKILL)
        killed_at = time.monotonic()
        result = proc.wait()
        stopped_after_s = time.monotonic() - killed_at

    assert result.returncode == 1, result.describe()
    assert stopped_after_s < SERVER_GONE_LIMIT_S, result.describe()
    assert epochs_done(proc) < 2 * 40, "the sweep trained to the end without its server"
    assert "Traceback" not in result.stderr, result.stderr
    errors = result.error_lines()
    assert len(errors) == 1 and "stopped answering" in errors[0] and server.uri in errors[0], result.stderr
    assert not (work.reports.exists() and any(work.reports.iterdir())), "reports were written"


def test_a_tracking_write_that_fails_mid_sweep_stops_it_with_one_line_and_no_run_left_running(new_workdir) -> None:
    """The model's artifact directory cannot be created (a file stands in the way): the export process fails
    on the first model, the training process stops at its next check, nothing is left RUNNING, no reports."""
    work = new_workdir("tracking-fails", **{"sweep.grid": {"lr": [0.01, 0.001]}, "train.epochs": 2})
    blocker = work.root / "not-a-directory"
    blocker.write_text("a file where the artifact directory should go")
    work.params["tracking"]["artifact_location"] = str(blocker / "mlruns")
    write_params(work.params_path, work.params)

    result = work.run("sweep", expect=None)

    assert result.returncode == 1, result.describe()
    assert "Traceback" not in result.stderr, result.stderr
    errors = result.error_lines()
    assert len(errors) == 1 and "model export process failed" in errors[0], result.stderr
    assert not (work.reports.exists() and any(work.reports.iterdir())), "reports were written"
    runs = all_runs(work.client(), work.experiment)
    assert not running(runs), f"RUNNING after a tracking failure: {running(runs)}"
    (parent,) = sweeps(runs)
    assert parent.info.status == "FAILED"
    first, *_ = sorted(children(runs, parent), key=lambda run: run.info.run_name)
    assert first.info.status == "FAILED" and "tracking failed" in first.data.tags[tags.FAILURE], first.data.tags
