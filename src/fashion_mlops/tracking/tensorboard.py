"""TensorBoard side of a run: scalars, histograms, sample images, the graph and the HParams entry."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from fashion_mlops.train import EpochResult

# TensorBoard tags for the per-epoch metrics, grouped so train and validation share a chart; a metric not named
# here is written under its own name
SCALARS = {
    "loss": "loss/train",
    "val_loss": "loss/val",
    "accuracy": "accuracy/train",
    "val_accuracy": "accuracy/val",
    "lr": "lr",
    "epoch_duration_s": "time/epoch_s",
}
SAMPLE_IMAGES = 64


class TensorBoardRun:
    """One run's event directory; every write goes to that directory only."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=5)

    def log_start(self, model: nn.Module, sample_images: torch.Tensor) -> None:
        """A grid of sample training images (uint8) and the model graph (traced on a CPU copy)."""
        images = sample_images[:SAMPLE_IMAGES].cpu()
        self.writer.add_images("samples/train", images.float() / 255.0, global_step=0)
        self.writer._get_file_writer().add_graph(_traced_graph(model, images[:2]))

    def log_epoch(self, result: EpochResult, model: nn.Module | None = None) -> None:
        """Scalars, and with `model`, histograms of its weights and gradients."""
        for key, value in result.as_dict().items():
            if key != "epoch":
                self.writer.add_scalar(SCALARS.get(key, key), value, result.epoch)
        for name, parameter in model.named_parameters() if model is not None else ():
            self.writer.add_histogram(f"weights/{name}", _array(parameter), result.epoch)
            if parameter.grad is not None:
                self.writer.add_histogram(f"gradients/{name}", _array(parameter.grad), result.epoch)

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


def _array(tensor: torch.Tensor) -> Any:
    return tensor.detach().float().cpu().numpy()


_GRAPHS: dict[str, Any] = {}


def _traced_graph(model: nn.Module, images: torch.Tensor) -> Any:
    """The model's TensorBoard graph, traced once per architecture and process, on a copy in eval mode."""
    key = type(model).__qualname__ + repr(model)
    if key not in _GRAPHS:
        from torch.utils.tensorboard._pytorch_graph import graph

        cpu_model = copy.deepcopy(model).to("cpu", memory_format=torch.contiguous_format).eval()
        with warnings.catch_warnings():  # tracing uses torch.jit, which warns it is deprecated
            warnings.simplefilter("ignore")
            _GRAPHS[key] = graph(cpu_model, images.float().div(255.0), use_strict_trace=False)
    return _GRAPHS[key]
