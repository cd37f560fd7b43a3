"""The train_sweep stage: one MLflow parent run, one child run per grid cell, best run chosen on validation.

Cells run one after another in this process (`sweep.workers: 1`) or in N worker processes that split
the CPU threads between them; either way each cell gets the same seed and the same data split.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from fashion_mlops import distributed, interrupts
from fashion_mlops.config import Cell, Params
from fashion_mlops.data.manifest import Manifest
from fashion_mlops.data.splits import Splits, load_split, train_val_split
from fashion_mlops.data.verify import dataset_digest
from fashion_mlops.errors import NoFinishedRuns
from fashion_mlops.models import build_model
from fashion_mlops.reports import Reports, write_json, write_text
from fashion_mlops.tracking import CellRun, CellRuns, NullSweep, ReusedCell, SweepTracking
from fashion_mlops.tracking.exporter import ModelExporter
from fashion_mlops.tracking.runs import start_sweep
from fashion_mlops.train import EpochResult, TrainingDiverged, TrialPruned, pick_device, train

EpochDone = Callable[[str, EpochResult], None]
# what one worker process needs besides the model: torch and its libraries, the training data, activations
WORKER_MEMORY_BYTES = 3 << 29


@dataclass(frozen=True)
class Execution:
    """How the cells run: in how many processes, and with how many CPU threads each (unless train.threads says)."""

    workers: int
    threads: int


def plan_execution(params: Params, n_cells: int, default_threads: int) -> Execution:
    """`sweep.workers`, clamped to the cells, the CPU cores and the memory there are (saying so when it is).

    The thread count depends only on params and the CPU, never on free memory or on how many cells are left to
    train: a resumed sweep trains a cell exactly as an uninterrupted one would (results are bit-identical only at
    equal threads). Memory only limits how many of those processes run at once.
    """
    asked = params.sweep.workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    fits = max(1, _available_memory() // WORKER_MEMORY_BYTES) if asked > 1 else asked
    share = max(1, min(asked, cores, n_cells))
    workers = max(1, min(share, fits))
    if workers < min(asked, n_cells):
        print(
            f"sweep.workers: {asked} -> {workers} worker processes: this machine has {cores} CPU core(s) "
            f"and memory for {fits} worker(s) (about {WORKER_MEMORY_BYTES >> 20} MiB each)",
            file=sys.stderr,
        )
    return Execution(workers, max(1, default_threads // share))


def _available_memory() -> int:
    """MemAvailable from /proc/meminfo; unlimited where there is none to read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 1 << 62


@dataclass
class CellOutcome:
    """What one grid cell produced, trained now or reused from an earlier identical run."""

    cell: Cell
    status: str = "PENDING"
    run_id: str | None = None
    model_uri: str | None = None
    history: list[EpochResult] = field(default_factory=list)
    duration_s: float = 0.0
    reused_from: str | None = None
    failure: str | None = None

    @property
    def final(self) -> EpochResult | None:
        return self.history[-1] if self.history else None


def load_training_data(params: Params, manifest: Manifest) -> Splits:
    full_train = load_split(manifest, Path(params.data.dir), "train")
    return train_val_split(full_train, params.data.val_size, params.train.seed, params.data.subset)


def run_sweep(
    params: Params, params_path: Path, manifest: Manifest, reports: Reports, export: ModelExporter | None
) -> list[CellOutcome]:
    """Train every grid cell, log each to MLflow and TensorBoard, write the results table and the best run.

    `export` (see `tracking.exporter.start_exporter`) logs the trained models; None when none are logged.

    Ctrl-C / SIGTERM are deferred to safe points (between training steps and cells): the current run and
    the sweep end as KILLED, and a rerun reuses the cells that finished.

    Under torchrun every process trains each cell together (DDP, see `distributed`); rank 0 alone tracks, decides
    which cells to reuse and reports.
    """
    launched = distributed.world()
    searched = params.sweep.search != "grid"
    outcomes = [] if searched else [CellOutcome(cell) for cell in params.cells()]
    n_runs = params.sweep.trials if searched else len(outcomes)
    execution = plan_execution(params, n_runs, distributed.default_threads(torch.get_num_threads()))
    data_digest = dataset_digest(manifest, Path(params.data.dir))  # of the files on disk, verified
    with interrupts.deferred():
        tracking = (
            start_sweep(params, params_path, manifest, n_runs, export, data_digest, execution.threads)
            if launched.leader
            else NullSweep()
        )
        try:
            splits = load_training_data(params, manifest)
            # every epoch is drawn (no rate limiting): a few hundred lines at most, and a log (or a test) reading
            # the bar sees each count
            epochs = sum(o.cell.train.epochs for o in outcomes)
            if searched:
                from fashion_mlops.search.space import max_epochs  # late: a grid sweep does not import Optuna

                epochs = n_runs * max_epochs(params)
            with tqdm(
                total=epochs, desc="sweep", unit="epoch", mininterval=0, miniters=1, disable=not launched.leader
            ) as bar:
                if searched:
                    outcomes = run_search(params, splits, tracking, bar, execution.threads, data_digest)
                else:
                    reuse = distributed.from_leader(tracking.reuse([o.cell for o in outcomes]))
                    for index, reused in reuse.items():
                        _mark_reused(outcomes[index], reused, bar)
                    pending = [o for o in outcomes if o.status == "PENDING"]
                    _run_pending(pending, params, manifest, splits, tracking, bar, execution)
            if not launched.leader:
                return outcomes  # rank 0 has the same outcomes, and reports them
            best = select_best(outcomes)
            model_uris = tracking.model_uris()
            for outcome in outcomes:
                outcome.model_uri = outcome.model_uri or model_uris.get(str(outcome.run_id))
            write_reports(outcomes, best, tracking.sweep_run_id, reports)
            tracking.finish(
                {
                    "best_val_accuracy": best.final.val_accuracy,
                    "finished_runs": _count(outcomes),
                    "pruned_runs": _count(outcomes, "PRUNED"),
                },
                {"best_run_id": str(best.run_id), "best_run_name": best.cell.name},
                reports.root,
            )
        except KeyboardInterrupt:
            tracking.end("KILLED", "interrupted")
            raise
        except BaseException as error:
            tracking.end("FAILED", f"{type(error).__name__}: {error}")
            raise
    print_summary(outcomes, best)
    return outcomes


def run_search(
    params: Params, splits: Splits, tracking: SweepTracking, bar: tqdm, threads: int, data_digest: str
) -> list[CellOutcome]:
    """A sampled search's trials (`sweep.search: random | tpe`), here or on Ray Tune; every outcome, pruned too."""
    from fashion_mlops.search import space  # late: a grid sweep does not import Optuna
    from fashion_mlops.tracking.store import tracking_uri

    name = space.study_name(params, data_digest, threads)
    if params.sweep.executor == "ray":
        from fashion_mlops.search.ray_tune import run_tune_search

        return run_tune_search(params, splits, tracking, bar, threads, name, tracking_uri(params))
    from fashion_mlops.search.local import open_study, run_local_search

    study = open_study(params, space.study_storage(tracking_uri(params)), name)
    return run_local_search(params, study, splits, tracking, bar, threads)


def run_cell(outcome: CellOutcome, splits: Splits, run: CellRun, on_epoch: EpochDone) -> CellOutcome:
    """Train one grid cell as a child run; a diverging run is marked FAILED and the sweep goes on.

    `on_epoch` may raise TrialPruned (a search's pruner): the run keeps the epochs it trained and ends PRUNED.
    """
    cell = outcome.cell
    interrupts.check()
    outcome.status = "RUNNING"
    started = time.perf_counter()

    def on_epoch_end(result: EpochResult, model: torch.nn.Module) -> None:
        outcome.history.append(result)
        run.epoch(result, model)
        on_epoch(cell.name, result)

    try:
        torch.manual_seed(cell.train.seed)
        model = build_model(cell.arch)
        run.start(model, splits.train)
        outcome.run_id = run.run_id
        train(model, splits, cell.train, pick_device(cell.train.device), on_epoch_end)
        outcome.duration_s = time.perf_counter() - started
        run.finish(model, outcome.history, outcome.duration_s, splits.val)
        outcome.status = "FINISHED"
        run.end("FINISHED")
    except TrialPruned as pruned:
        outcome.status, outcome.failure = "PRUNED", str(pruned)
        outcome.duration_s = time.perf_counter() - started
        run.prune(outcome.history, outcome.duration_s, outcome.failure)
    except TrainingDiverged as error:
        outcome.status, outcome.failure = "FAILED", f"diverged: {error}"
        outcome.duration_s = time.perf_counter() - started
        run.end("FAILED", outcome.failure)
    except KeyboardInterrupt:
        outcome.status = "KILLED"
        run.end("KILLED", "interrupted")
        raise
    except BaseException as error:
        outcome.status = "FAILED"
        run.end("FAILED", f"{type(error).__name__}: {error}")
        raise
    return outcome


def _run_pending(
    pending: list[CellOutcome],
    params: Params,
    manifest: Manifest,
    splits: Splits,
    tracking: SweepTracking,
    bar: tqdm,
    execution: Execution,
) -> None:
    """Train the cells no earlier run stands in for, with the executor params ask for."""
    if params.sweep.executor == "ray" and pending:
        from fashion_mlops.executors.ray_cluster import run_on_ray
        from fashion_mlops.tracking.store import tracking_uri

        def on_epoch(name: str, val_accuracy: float) -> None:
            show_epoch(bar, name, val_accuracy)

        uri = tracking_uri(params)
        run_on_ray(pending, splits, tracking.runs, params, uri, execution.threads, on_epoch, tracking.check)
    elif execution.workers > 1 and len(pending) > 1:
        _run_in_workers(pending, params, manifest, tracking, bar, execution)
    else:
        _run_serially(pending, splits, tracking, bar, execution.threads)


def _mark_reused(outcome: CellOutcome, reused: ReusedCell, bar: tqdm) -> None:
    outcome.run_id, outcome.history, outcome.duration_s = reused.run_id, reused.history, reused.duration_s
    outcome.model_uri, outcome.reused_from, outcome.status = reused.model_uri, reused.reused_from, "FINISHED"
    bar.update(outcome.cell.train.epochs)


def show_epoch(bar: tqdm, name: str, val_accuracy: float) -> None:
    bar.set_postfix_str(f"{name[:40]} val_acc={val_accuracy:.4f}")
    bar.update(1)


def _run_serially(
    pending: list[CellOutcome], splits: Splits, tracking: SweepTracking, bar: tqdm, default_threads: int
) -> None:
    """Each cell in this process, with its own thread count (train.threads, swept or not; else the plan's)."""

    def on_epoch(name: str, result: EpochResult) -> None:
        show_epoch(bar, name, result.val_accuracy)
        tracking.check()

    for outcome in pending:
        torch.set_num_threads(outcome.cell.train.threads or default_threads)
        run_cell(outcome, splits, tracking.runs.cell(outcome.cell), on_epoch)


# --- parallel cells -------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(params: Params, manifest: Manifest, runs: CellRuns, threads: int, events: Any) -> None:
    """Per worker process: its share of the CPU threads, the data loaded once, and where its runs go."""
    interrupts.install_deferred()
    interrupts.stop_when_parent_dies()  # a SIGKILLed sweep's worker ends its run KILLED at its next step
    _WORKER.update(splits=load_training_data(params, manifest), runs=runs, threads=threads, events=events)


def _worker_run(outcome: CellOutcome) -> CellOutcome:
    def on_epoch(name: str, result: EpochResult) -> None:
        _WORKER["events"].put((name, result.val_accuracy))

    torch.set_num_threads(outcome.cell.train.threads or _WORKER["threads"])
    return run_cell(outcome, _WORKER["splits"], _WORKER["runs"].cell(outcome.cell), on_epoch)


def _run_in_workers(
    pending: list[CellOutcome],
    params: Params,
    manifest: Manifest,
    tracking: SweepTracking,
    bar: tqdm,
    execution: Execution,
) -> None:
    """Run cells in the planned number of spawned processes; results land back in `pending`, in grid order."""
    workers = min(execution.workers, len(pending))
    # a cell's train.threads, when set, is its thread count in serial and parallel sweeps alike: results only
    # match bit for bit between the two at equal thread counts (oneDNN's reductions depend on it)
    threads = execution.threads
    context = mp.get_context("spawn")
    events = context.Queue()
    by_index = {o.cell.index: o for o in pending}
    executor = ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(params, manifest, tracking.runs, threads, events),
    )
    try:
        futures = {executor.submit(_worker_run, outcome) for outcome in pending}
        while futures:
            done, futures = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(events, bar)
            interrupts.check()
            tracking.check()
            for future in done:
                result = future.result()
                by_index[result.cell.index].__dict__.update(result.__dict__)
        _drain(events, bar)
    except BaseException:
        for future in futures:
            future.cancel()
        for process in list(getattr(executor, "_processes", {}).values()):
            process.terminate()  # SIGTERM: each worker ends its MLflow run as KILLED at its next step
        executor.shutdown(wait=True, cancel_futures=True)
        raise
    executor.shutdown(wait=True)


def _drain(events: Any, bar: tqdm) -> None:
    while True:
        try:
            name, val_accuracy = events.get_nowait()
        except queue.Empty:
            return
        show_epoch(bar, name, val_accuracy)


# --- selection and reports ------------------------------------------------------------------------


def select_best(outcomes: list[CellOutcome]) -> CellOutcome:
    """Highest final validation accuracy among finished runs; ties go to the lower validation loss."""
    finished = [o for o in outcomes if o.status == "FINISHED" and o.final is not None]
    if not finished:
        reasons = "; ".join(f"{o.cell.name}: {o.failure}" for o in outcomes)
        raise NoFinishedRuns(f"no grid cell finished training ({reasons}); the registry was left untouched")
    return max(finished, key=lambda o: (o.final.val_accuracy, -o.final.val_loss, -o.cell.index))


def results_table(outcomes: list[CellOutcome]) -> pd.DataFrame:
    """The tutorial's results table: one row per run and epoch, with every swept parameter."""
    rows = [
        {
            "run": o.cell.name,
            "run_id": o.run_id,
            "status": o.status,
            **result.as_dict(),
            "run_duration_s": o.duration_s,
            **{k: _plain(v) for k, v in o.cell.swept.items()},
        }
        for o in outcomes
        for result in o.history
    ]
    return pd.DataFrame(rows)


def write_reports(outcomes: list[CellOutcome], best: CellOutcome, sweep_run_id: str, reports: Reports) -> None:
    table = results_table(outcomes)
    write_text(reports.sweep_csv, table.to_csv(index=False))
    runs = {
        o.cell.name: {
            "status": o.status,
            "run_id": o.run_id,
            "epochs": len(o.history),
            **({k: v for k, v in o.final.as_dict().items() if k != "epoch"} if o.final else {}),
            "run_duration_s": o.duration_s,
        }
        for o in outcomes
    }
    write_json(
        reports.sweep_json,
        {
            "best_run": best.cell.name,
            "best_val_accuracy": best.final.val_accuracy,
            "best_val_loss": best.final.val_loss,
            "finished_runs": _count(outcomes),
            "pruned_runs": _count(outcomes, "PRUNED"),
            "total_runs": len(outcomes),
            "runs": runs,
            "rows": table.to_dict(orient="records"),
        },
    )
    write_json(
        reports.best_run,
        {
            "run_name": best.cell.name,
            "run_id": best.run_id,
            "sweep_run_id": sweep_run_id,
            "model_uri": best.model_uri,
            "arch": best.cell.arch,
            "val_accuracy": best.final.val_accuracy,
            "val_loss": best.final.val_loss,
            "params": {k: _plain(v) for k, v in best.cell.flat_params().items()},
            "reused_from": best.reused_from,
        },
    )


def print_summary(outcomes: list[CellOutcome], best: CellOutcome) -> None:
    table = Table(title="Sweep results (final epoch)")
    swept_keys = list(outcomes[0].cell.swept) if outcomes else []
    for column in ["run", *swept_keys, "status", "val_acc", "val_loss", "train_acc", "time_s"]:
        table.add_column(column, justify="left" if column in ("run", "status") else "right")
    for o in outcomes:
        f = o.final
        cells = [str(o.cell.index), *[_shown(o.cell.swept[k]) for k in swept_keys]]
        cells.append(o.status + (" (reused)" if o.reused_from else ""))
        cells += [f"{f.val_accuracy:.4f}", f"{f.val_loss:.4f}", f"{f.accuracy:.4f}"] if f else ["-", "-", "-"]
        cells.append(f"{o.duration_s:.1f}")
        table.add_row(*cells, style="bold green" if o is best else None)
    console = Console(width=160)
    console.print(table)
    console.print(f"best: {best.cell.name} (val_accuracy {best.final.val_accuracy:.4f}), run id {best.run_id}")


def _count(outcomes: list[CellOutcome], status: str = "FINISHED") -> int:
    return sum(o.status == status for o in outcomes)


def _shown(value: Any) -> str:
    """A swept value in the summary table: drawn floats to 4 significant digits (the CSV keeps them whole)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _plain(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)
