"""The sweep picks its best run on validation data (final epoch, finished cells only, ties broken predictably) and
trains each cell with its own settings."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from tqdm import tqdm

from fashion_mlops.config import Cell, TrainConfig
from fashion_mlops.data.download import download_dataset
from fashion_mlops.data.manifest import load_manifest
from fashion_mlops.data.splits import load_split, train_val_split
from fashion_mlops.errors import NoFinishedRuns
from fashion_mlops.sweep import CellOutcome, _run_serially, plan_execution, select_best
from fashion_mlops.tracking import NullCellRun, NullSweep
from fashion_mlops.train import EpochResult


def outcome(index: int, status: str, val_accuracies: list[float], val_loss: float = 0.5) -> CellOutcome:
    history = [
        EpochResult(
            epoch=e + 1, loss=1.0, accuracy=0.5, val_loss=val_loss, val_accuracy=acc, lr=0.01, epoch_duration_s=1.0
        )
        for e, acc in enumerate(val_accuracies)
    ]
    cell = Cell(index=index, name=f"run-{index:02d}", arch="simple_cnn", train=TrainConfig(), swept={"lr": index})
    return CellOutcome(cell=cell, status=status, history=history, failure=None)


def test_select_best_picks_the_highest_final_validation_accuracy():
    outcomes = [
        outcome(0, "FINISHED", [0.5, 0.6]),
        outcome(1, "FINISHED", [0.9, 0.7]),  # best earlier epoch, but the final epoch is what counts
        outcome(2, "FINISHED", [0.4, 0.8]),
    ]

    assert select_best(outcomes).cell.index == 2


def test_select_best_ignores_failed_cells_even_with_higher_accuracy():
    failed = outcome(0, "FAILED", [0.99])
    failed.failure = "diverged"
    outcomes = [failed, outcome(1, "FINISHED", [0.6]), outcome(2, "FINISHED", [0.7])]

    assert select_best(outcomes).cell.index == 2


@pytest.mark.parametrize("status", ["PENDING", "RUNNING", "KILLED"])
def test_select_best_ignores_cells_that_never_finished(status):
    outcomes = [outcome(0, status, [0.99]), outcome(1, "FINISHED", [0.2])]

    assert select_best(outcomes).cell.index == 1


def test_select_best_breaks_accuracy_ties_by_lower_validation_loss_then_earlier_cell():
    outcomes = [
        outcome(0, "FINISHED", [0.8], val_loss=0.4),
        outcome(1, "FINISHED", [0.8], val_loss=0.3),
        outcome(2, "FINISHED", [0.8], val_loss=0.3),
    ]

    assert select_best(outcomes).cell.index == 1


def test_select_best_raises_no_finished_runs_when_every_cell_failed():
    outcomes = [dataclasses.replace(outcome(i, "FAILED", [0.9]), failure=f"diverged #{i}") for i in range(2)]

    with pytest.raises(NoFinishedRuns, match=r"run-00: diverged #0.*run-01: diverged #1"):
        select_best(outcomes)


def test_select_best_raises_no_finished_runs_for_an_empty_sweep():
    with pytest.raises(NoFinishedRuns):
        select_best([])


class ThreadCountingRuns:
    """Cell runs that record how many CPU threads torch trains each cell with."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def cell(self, cell: Cell) -> NullCellRun:
        seen = self.seen

        class Counting(NullCellRun):
            def start(self, model, train) -> None:
                seen.append(torch.get_num_threads())

        return Counting()


def test_a_swept_thread_count_is_the_one_each_cell_trains_with(sample_dataset, tmp_path) -> None:
    manifest = load_manifest(sample_dataset / "manifest.json")
    download_dataset(manifest, [str(sample_dataset)], tmp_path)
    splits = train_val_split(load_split(manifest, tmp_path, "train"), val_size=60, seed=0)
    train_settings = TrainConfig(epochs=1, batch_size=100, device="cpu")
    cells = [
        Cell(index=i, name=f"run-{i:02d}", arch="simple_cnn", train=train_settings.model_copy(update={"threads": n}),
             swept={"threads": n})
        for i, n in enumerate([1, 2, 1])
    ]  # fmt: skip
    tracking = NullSweep()
    tracking.runs = ThreadCountingRuns()
    before = torch.get_num_threads()
    try:
        with tqdm(disable=True) as bar:
            _run_serially([CellOutcome(cell) for cell in cells], splits, tracking, bar, default_threads=1)
    finally:
        torch.set_num_threads(before)

    assert tracking.runs.seen == [1, 2, 1]


def test_workers_are_clamped_to_the_cores_and_the_memory_with_a_message(monkeypatch, capsys) -> None:
    from fashion_mlops import sweep
    from fashion_mlops.config import Params

    params = Params.model_validate({"data": {"sources": ["/nowhere"]}, "sweep": {"workers": 64}})
    monkeypatch.setattr(sweep.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(sweep, "_available_memory", lambda: 64 * sweep.WORKER_MEMORY_BYTES)

    assert plan_execution(params, n_cells=6, default_threads=2) == sweep.Execution(workers=2, threads=1)
    message = capsys.readouterr().err
    assert "sweep.workers: 64 -> 2 worker processes" in message and "2 CPU core(s)" in message

    monkeypatch.setattr(sweep, "_available_memory", lambda: sweep.WORKER_MEMORY_BYTES + 1)
    # memory limits how many processes run at once, never the threads each trains with (part of resume fingerprints)
    assert plan_execution(params, n_cells=6, default_threads=2) == sweep.Execution(workers=1, threads=1)
    assert "memory for 1 worker(s)" in capsys.readouterr().err


def test_the_thread_count_does_not_depend_on_how_many_cells_are_left(monkeypatch) -> None:
    """A resumed sweep trains its remaining cell with the threads an uninterrupted one would (resume's promise)."""
    from fashion_mlops import sweep
    from fashion_mlops.config import Params

    params = Params.model_validate({"data": {"sources": ["/nowhere"]}, "sweep": {"workers": 2}})
    monkeypatch.setattr(sweep.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(sweep, "_available_memory", lambda: 64 * sweep.WORKER_MEMORY_BYTES)

    assert plan_execution(params, n_cells=4, default_threads=8) == sweep.Execution(workers=2, threads=4)
