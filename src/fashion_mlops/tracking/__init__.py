"""Tracking behind one interface: what a sweep and its training runs tell MLflow and TensorBoard.

`runs.start_sweep` is the one place tracking starts. Executors (serial, worker processes) drive each grid cell's
`CellRun` the same way: start, epoch after epoch, finish, end. With `tracking.enabled: false` every call is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from torch import nn

    from fashion_mlops.config import Cell
    from fashion_mlops.data.splits import Split
    from fashion_mlops.train import EpochResult


class CellRun(Protocol):
    """One grid cell's run, as training sees it."""

    run_id: str | None

    def start(self, model: nn.Module, train: Split) -> None:
        """Before the first epoch: the run's params, its dataset, the model graph and sample images."""

    def epoch(self, result: EpochResult, model: nn.Module) -> None:
        """After each epoch: its metrics, and weight and gradient histograms when due."""

    def finish(self, model: nn.Module, history: list[EpochResult], duration_s: float, val: Split) -> None:
        """Training is done: final metrics, the HParams entry, and the model to log."""

    def end(self, status: str, reason: str | None = None) -> None:
        """The run ends FINISHED, FAILED or KILLED (a FINISHED run with a model ends once the model is logged)."""

    def prune(self, history: list[EpochResult], duration_s: float, reason: str) -> None:
        """A search's pruner stopped training: the metrics reached so far, tagged pruned, and the run ends KILLED."""


class CellRuns(Protocol):
    """Hands out cell runs; picklable, so worker processes get one too."""

    def cell(self, cell: Cell) -> CellRun: ...


@dataclass(frozen=True)
class ReusedCell:
    """An earlier run standing in for training a cell: a FINISHED one with the same fingerprint (params, data,
    code), or a resumed search's trial."""

    run_id: str
    history: list[EpochResult]
    duration_s: float
    model_uri: str | None
    reused_from: str
    status: str = "FINISHED"  # or KILLED: a pruned trial


class SweepTracking(Protocol):
    """The sweep's parent run, from start to end."""

    sweep_run_id: str
    runs: CellRuns

    def reuse(self, cells: list[Cell]) -> dict[int, ReusedCell]:
        """Child runs for the cells an earlier identical run already trained (when sweep.resume is on)."""

    def reuse_trial(self, cell: Cell, run_id: str) -> ReusedCell | None:
        """A child run copying run `run_id`, a resumed search's earlier trial (finished or pruned), if still there."""

    def check(self) -> None:
        """Raise TrackingFailed if logging a model failed, so the sweep stops at a safe point."""

    def model_uris(self) -> dict[str, str]:
        """Wait until every trained model is logged; run id -> model URI."""

    def finish(self, metrics: dict[str, float], tags: dict[str, str], reports: Path) -> None:
        """The sweep's summary and reports go to the parent run, which ends FINISHED."""

    def end(self, status: str, reason: str | None = None) -> None:
        """End the sweep, and every run of it still open, with `status` (KILLED or FAILED)."""


class NullCellRun:
    run_id = None

    def start(self, model: nn.Module, train: Split) -> None: ...

    def epoch(self, result: EpochResult, model: nn.Module) -> None: ...

    def finish(self, model: nn.Module, history: list[EpochResult], duration_s: float, val: Split) -> None: ...

    def end(self, status: str, reason: str | None = None) -> None: ...

    def prune(self, history: list[EpochResult], duration_s: float, reason: str) -> None: ...


class NullCellRuns:
    def cell(self, cell: Cell) -> CellRun:
        return NullCellRun()


class NullSweep:
    sweep_run_id = "untracked"
    runs = NullCellRuns()

    def reuse(self, cells: list[Cell]) -> dict[int, ReusedCell]:
        return {}

    def reuse_trial(self, cell: Cell, run_id: str) -> ReusedCell | None:
        return None

    def check(self) -> None: ...

    def model_uris(self) -> dict[str, str]:
        return {}

    def finish(self, metrics: dict[str, float], tags: dict[str, str], reports: Path) -> None: ...

    def end(self, status: str, reason: str | None = None) -> None: ...
