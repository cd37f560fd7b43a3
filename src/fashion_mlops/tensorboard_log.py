"""TensorBoard side of a run: scalars, histograms, sample images, the graph and the HParams entry."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from fashion_mlops.results import EpochResult

SCALARS = {
    "loss/train": "loss",
    "loss/val": "val_loss",
    "accuracy/train": "accuracy",
    "accuracy/val": "val_accuracy",
    "lr": "lr",
    "time/epoch_s": "epoch_duration_s",
}


class TensorBoardRun:
    """One run's event directory; every write goes to that directory only."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=5)

    def log_start(self, model: nn.Module, sample_images: torch.Tensor) -> None:
        """A grid of sample training images and the model graph (traced on CPU)."""
        self.writer.add_images("samples/train", sample_images[:64].float() / 255.0, global_step=0)
        self.writer._get_file_writer().add_graph(_traced_graph(model, sample_images[:2]))

    def log_epoch(self, result: EpochResult, histograms: dict[str, np.ndarray] | None) -> None:
        """Scalars, and the histograms (tag -> values, see `tracker_client.histogram_snapshot`) if any."""
        values = result.as_dict()
        for tag, key in SCALARS.items():
            self.writer.add_scalar(tag, values[key], result.epoch)
        for tag, array in (histograms or {}).items():
            self.writer.add_histogram(tag, array, result.epoch)

    def log_hparams(self, swept: dict[str, Any], final: dict[str, float]) -> None:
        """Fill the HParams tab: swept values with final metrics, in this run's own directory."""
        hparam_dict = {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in swept.items()}
        metric_dict = {f"hparam/{k}": v for k, v in final.items()}
        experiment, session_start, session_end = hparams(hparam_dict or {"run": "single"}, metric_dict)
        file_writer = self.writer._get_file_writer()
        for summary in (experiment, session_start, session_end):
            file_writer.add_summary(summary)
        for tag, value in metric_dict.items():
            self.writer.add_scalar(tag, value)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


_GRAPHS: dict[str, Any] = {}


def _traced_graph(model: nn.Module, images: torch.Tensor) -> Any:
    """The model's TensorBoard graph, traced once per architecture and process (tracing costs ~0.3 s)."""
    key = type(model).__qualname__ + repr(model)
    if key not in _GRAPHS:
        import copy

        from torch.utils.tensorboard._pytorch_graph import graph

        cpu_model = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).eval()
        with warnings.catch_warnings():  # tracing uses torch.jit, which warns it is deprecated
            warnings.simplefilter("ignore")
            _GRAPHS[key] = graph(cpu_model, images.float().div(255.0).cpu(), use_strict_trace=False)
    return _GRAPHS[key]
