"""PyTorch -> ONNX (torch.export + the dynamo exporter) -> OpenVINO IR, each with a dynamic batch dimension."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from fashion_mlops.inference import INPUT_NAME, OUTPUT_NAME
from fashion_mlops.models import NUM_CLASSES

if TYPE_CHECKING:
    from mlflow.models import ModelSignature
    from torch import nn

# torch.export specialises a batch of 1 to a constant; any larger example keeps the batch dimension symbolic
EXAMPLE_BATCH = 2


def to_onnx(model: nn.Module, path: Path) -> None:
    """Export `model` (float N x 1 x 28 x 28 -> N x 10 logits) to a self-contained ONNX file at `path`."""
    import torch

    example = (torch.zeros(EXAMPLE_BATCH, 1, 28, 28),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals are not the user's concern
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            optimize=True,
            verbose=False,
        )
    program.save(str(path), external_data=False)


def to_openvino(onnx_path: Path, xml_path: Path) -> None:
    """Convert the ONNX file to an OpenVINO IR (`xml_path` and the .bin beside it), weights kept in f32."""
    import openvino

    model = openvino.convert_model(str(onnx_path))
    openvino.save_model(model, str(xml_path), compress_to_fp16=False)  # fp16 is save_model's default


def onnx_signature() -> ModelSignature:
    """The exported model's named tensors, so a server checks a request's shape and type before the model runs."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, 28, 28), INPUT_NAME)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, NUM_CLASSES), OUTPUT_NAME)]),
    )
