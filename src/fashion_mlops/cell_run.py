"""One grid cell's MLflow child run and TensorBoard directory, written in the tracker process.

The training process sends what a run needs (sample images, per-epoch results, parameter and gradient
snapshots, the final weights); this module turns them into MLflow calls, TensorBoard events and an MLflow
pt2 model. The model is rebuilt here from its architecture name and weights, so torch.export (which switches
oneDNN off process-wide while it traces) never runs beside training.
"""

from __future__ import annotations

import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.entities import DatasetInput, InputTag, Param, RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from torch import nn

from fashion_mlops.config import Params, RunSpec
from fashion_mlops.models import build_model
from fashion_mlops.results import EpochResult
from fashion_mlops.store import metric_batch
from fashion_mlops.tensorboard_log import TensorBoardRun
from fashion_mlops.tracking import TAG_FAILURE, TAG_MODEL_URI, SweepInfo, process_tags

MODEL_NAME = "model"


class CellRun:
    """One grid cell's child run: params, dataset, per-epoch metrics, HParams and the model.

    Everything goes through the client API with this run's id; only model logging makes the run
    MLflow's "active run", briefly, because `mlflow.pytorch.log_model` needs one.
    """

    def __init__(self, params: Params, spec: RunSpec, sweep: SweepInfo, name: str, fingerprint: str) -> None:
        self.params = params
        self.spec = spec
        self.client = mlflow.MlflowClient()
        log_dir = Path(params.tracking.tensorboard_dir) / sweep.sweep_run_id[:8] / name
        tags = sweep.cell_tags(fingerprint, str(log_dir)) | process_tags()
        self.run_id: str = self.client.create_run(sweep.experiment_id, run_name=name, tags=tags).info.run_id
        try:
            self.tensorboard = TensorBoardRun(log_dir)
        except BaseException:
            self.client.set_terminated(self.run_id, RunStatus.to_string(RunStatus.FAILED))
            raise
        self.started = time.perf_counter()
        self.model_uri: str | None = None

    def log_start(self, sample_images: np.ndarray, train_images: int, dataset: Any) -> None:
        params = self.spec.flat_params() | {
            "val_size": self.params.data.val_size,
            "subset": self.params.data.subset,
            "train_images": train_images,
        }
        self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        context = InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")
        self.client.log_inputs(self.run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=[context])])
        self.tensorboard.log_start(build_model(self.spec.arch), torch.from_numpy(sample_images))

    def log_metrics(self, values: dict[str, float], step: int) -> None:
        self.client.log_batch(self.run_id, metrics=metric_batch(values, step))

    def log_epoch(self, result: EpochResult, histograms: dict[str, np.ndarray] | None) -> None:
        values = result.as_dict()
        self.log_metrics(values, step=values.pop("epoch"))
        self.tensorboard.log_epoch(result, histograms)

    def log_finish(self, history: list[EpochResult], duration_s: float) -> None:
        """Final metrics and the HParams entry."""
        final = history[-1]
        summary = {"final_" + k: v for k, v in final.as_dict().items() if k not in ("epoch", "lr")}
        self.log_metrics(summary | {"run_duration_s": duration_s}, step=final.epoch)
        self.tensorboard.log_hparams(
            self.spec.swept or {"arch": self.spec.arch},
            {
                "accuracy": final.accuracy,
                "loss": final.loss,
                "val_accuracy": final.val_accuracy,
                "val_loss": final.val_loss,
            },
        )

    def log_weights(self, state: dict[str, np.ndarray], example_images: np.ndarray) -> str:
        """Rebuild the trained network from its weights and log it as an MLflow pt2 model; returns its URI."""
        model = build_model(self.spec.arch)
        model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        self.model_uri = log_model(self.run_id, model, example_images)
        self.client.set_tag(self.run_id, TAG_MODEL_URI, self.model_uri)
        return self.model_uri

    def end(self, status: str, reason: str | None = None) -> None:
        """Flush TensorBoard and end the run with `status` (and the reason as a tag)."""
        try:
            self.tensorboard.close()
        finally:
            if reason:
                self.client.set_tag(self.run_id, TAG_FAILURE, reason[:5000])
            self.client.set_terminated(self.run_id, status)


def log_model(run_id: str, model: nn.Module, example_images: np.ndarray) -> str:
    """Log `model` (on CPU, eval mode) into `run_id` with MLflow (pt2 format), with signature and input example.

    `example_images` are uint8 N x 1 x 28 x 28 with N > 1: torch.export specialises a batch of one.
    """
    example = example_images.astype(np.float32) / 255.0
    mlflow.start_run(run_id=run_id)
    try:
        return mlflow.pytorch.log_model(
            model.to("cpu").eval(),
            name=MODEL_NAME,
            input_example=example,
            serialization_format="pt2",
            pip_requirements=[f"torch=={version('torch')}", f"torchvision=={version('torchvision')}"],
            # MLflow would reload the saved model to replay the example as a serving request (~0.2 s a run);
            # the signature is already inferred from the example, and the tests load and serve the champion
            validate_serving_input=False,
        ).model_uri
    finally:
        mlflow.end_run()  # the model's run is momentarily FINISHED here; CellRun.end sets its final status
