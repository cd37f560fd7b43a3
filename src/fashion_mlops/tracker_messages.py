"""What the training process (and its workers) tell the tracker process, and what it answers. Plain data only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fashion_mlops.config import Params, RunSpec
from fashion_mlops.results import EpochResult


@dataclass(frozen=True)
class DatasetShape:
    """Shapes and dtypes of the training split's images and labels (NumPy dtype names)."""

    images_shape: tuple[int, ...]
    images_dtype: str
    labels_shape: tuple[int, ...]
    labels_dtype: str


@dataclass(frozen=True)
class Setup:
    """Everything the tracker process needs before the first message."""

    params: Params
    params_path: str
    sweep_params: dict[str, Any]
    cells: list[tuple[str, RunSpec]]  # (name, spec) in grid order
    sweep_pid: int


# --- training process -> tracker ---------------------------------------------------------------------


@dataclass(frozen=True)
class Begin:
    """The data loaded: create the sweep's parent run and look for reusable cells."""


@dataclass(frozen=True)
class CellStarted:
    index: int
    sample_images: np.ndarray  # uint8 N x 1 x 28 x 28, for the TensorBoard image grid and graph
    train_images: int
    dataset: DatasetShape


@dataclass(frozen=True)
class EpochEnded:
    index: int
    result: EpochResult
    histograms: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class CellTrained:
    index: int
    history: list[EpochResult]
    duration_s: float
    weights: dict[str, np.ndarray] | None  # the trained state_dict on CPU; None when models are not logged
    example_images: np.ndarray


@dataclass(frozen=True)
class CellEnded:
    index: int
    status: str  # FINISHED | FAILED | KILLED
    reason: str | None = None


@dataclass(frozen=True)
class IdsRequested:
    """Answer with every cell's run id and model URI, once everything sent before has been logged."""


@dataclass(frozen=True)
class SweepFinished:
    metrics: dict[str, float]
    tags: dict[str, str]
    reports: str


@dataclass(frozen=True)
class SweepEnded:
    status: str
    reason: str | None = None


# --- tracker -> training process ---------------------------------------------------------------------


@dataclass(frozen=True)
class ReusedCell:
    run_id: str
    history: list[EpochResult]
    duration_s: float
    model_uri: str | None
    reused_from: str


@dataclass(frozen=True)
class Ready:
    sweep_run_id: str
    reused: dict[int, ReusedCell] = field(default_factory=dict)


@dataclass(frozen=True)
class CellIds:
    ids: dict[int, tuple[str, str | None]]  # index -> (run id, model URI)


@dataclass(frozen=True)
class Failed:
    message: str
    unavailable: bool = False  # the tracking server did not answer


@dataclass(frozen=True)
class Done:
    """The sweep's parent run has ended; the tracker process exits."""
