"""The three runtimes a model runs in, behind one call: float images in, class logits out.

Every runtime takes what the logged model takes, float32 N x 1 x 28 x 28 in [0, 1], and returns N x 10 logits. Each
uses the same number of threads, so their figures compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

if TYPE_CHECKING:
    from torch import nn

LABELS = {"torch": "PyTorch (eager)", "onnx": "ONNX Runtime", "openvino": "OpenVINO"}


class Runtime(Protocol):
    name: str

    def logits(self, images: np.ndarray) -> np.ndarray:
        """N x 10 class logits for float32 N x 1 x 28 x 28 images in [0, 1]."""


class TorchRuntime:
    name = "torch"

    def __init__(self, model: nn.Module) -> None:
        from fashion_mlops.train import set_eval_mode

        set_eval_mode(model)
        self.model = model

    def logits(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(images)).float().numpy()


class OnnxRuntime:
    name = "onnx"

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: images})[0]


class OpenVinoRuntime:
    name = "openvino"

    def __init__(self, xml: Path, threads: int) -> None:
        import openvino

        # f32 explicitly: on CPUs with native bf16 the CPU plugin would otherwise infer in bf16 by itself
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
        self.compiled = openvino.Core().compile_model(str(xml), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def logits(self, images: np.ndarray) -> np.ndarray:
        return self.request.infer({0: images})[0].copy()


def model_input(images: np.ndarray) -> np.ndarray:
    """uint8 N x 1 x 28 x 28 (or N x 28 x 28) -> the models' float32 input in [0, 1]."""
    images = images.reshape(len(images), 1, 28, 28)
    return np.ascontiguousarray(images, dtype=np.float32) / np.float32(255.0)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def probabilities(runtime: Runtime, images: np.ndarray, batch_size: int, flip: bool = False) -> np.ndarray:
    """Class probabilities (float64) for uint8 images, in batches; `flip` mirrors each image first."""
    outputs = []
    for start in range(0, len(images), batch_size):
        x = model_input(images[start : start + batch_size])
        if flip:
            x = np.ascontiguousarray(x[..., ::-1])
        outputs.append(softmax(runtime.logits(x)))
    return np.concatenate(outputs) if outputs else np.zeros((0, 10))


@dataclass(frozen=True)
class Outputs:
    """A runtime's class probabilities for each image, and for its mirror image when evaluate uses TTA."""

    plain: np.ndarray
    mirrored: np.ndarray | None

    @classmethod
    def of(cls, runtime: Runtime, images: np.ndarray, batch_size: int, tta_flip: bool) -> Outputs:
        mirrored = probabilities(runtime, images, batch_size, flip=True) if tta_flip else None
        return cls(probabilities(runtime, images, batch_size), mirrored)

    def predicted(self) -> np.ndarray:
        """The probabilities evaluate predicts with (averaged with the mirror image's under TTA)."""
        return self.plain if self.mirrored is None else (self.plain + self.mirrored) / 2
