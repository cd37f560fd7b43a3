"""The exported champion in MLflow: the ONNX model and the OpenVINO IR logged into the run that trained the source
version, the ONNX model registered as `<model_name>-onnx`, each version tagged with the other, one alias for both."""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib.metadata import version as package_version
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import ModelSignature

from fashion_mlops.tracking import registry, tags

ONNX_MODEL_NAME = "onnx"  # the logged model's name in the run
OPENVINO_PATH = "openvino"  # the IR's artifact folder in the run


@dataclass(frozen=True)
class Twin:
    """The ONNX version registered for a source version, and whether it now carries the source's alias."""

    version: ModelVersion
    reused: bool
    has_alias: bool


def onnx_name(model_name: str) -> str:
    return f"{model_name}-onnx"


def log_and_register(
    source: ModelVersion,
    onnx_file: Path,
    onnx_sha256: str,
    ir_dir: Path,
    signature: ModelSignature,
    example: np.ndarray,
    alias: str,
) -> Twin:
    """Register the ONNX twin of `source` (reusing one that holds the same file), link the two, share the alias.

    The alias moves to the twin only while `source` holds it, read right before the move.
    """
    name, source_version = onnx_name(source.name), str(source.version)
    twin = registry.find_version(name, {tags.SOURCE_VERSION: source_version, tags.ONNX_SHA256: onnx_sha256})
    reused = twin is not None
    if twin is None:
        import onnx

        client = mlflow.MlflowClient()
        logged = mlflow.onnx.log_model(
            onnx.load(str(onnx_file)),
            name=ONNX_MODEL_NAME,
            run_id=source.run_id,  # logs into the finished run without reopening it
            input_example=example,
            signature=signature,
            pip_requirements=[f"onnx=={package_version('onnx')}", f"onnxruntime=={package_version('onnxruntime')}"],
            save_as_external_data=False,
            onnx_execution_providers=["CPUExecutionProvider"],  # the one provider export checked parity on
        )
        client.log_artifacts(source.run_id, str(ir_dir), artifact_path=OPENVINO_PATH)
        twin = registry.register(
            logged.model_uri,
            name,
            source.run_id,
            tags={
                tags.SOURCE_VERSION: source_version,
                tags.ONNX_SHA256: onnx_sha256,
                tags.OPENVINO_URI: f"runs:/{source.run_id}/{OPENVINO_PATH}",
            },
            description=f"{source.name} exported to ONNX (its OpenVINO IR is logged beside it)",
        )
    client = mlflow.MlflowClient()
    client.set_model_version_tag(source.name, source_version, tags.ONNX_VERSION, str(twin.version))
    has_alias = share_alias(source, alias, str(twin.version))
    return Twin(client.get_model_version(name, twin.version), reused, has_alias)


def share_alias(source: ModelVersion, alias: str, twin_version: str, settle_s: float = registry.SETTLE_S) -> bool:
    """Give the twin `alias` while `source` holds it; whether it does, as read after the move.

    Another host's evaluation may move the source's alias between the read and the move (MLflow has no compare-and-
    set), and that host's export then gives the alias to its own twin. So after the move, and a pause of `settle_s`,
    the source's alias is read again; if it moved, the ONNX alias goes to the new holder's twin where one is
    registered already (otherwise that holder's export moves it when it runs). The window that remains is the one
    registry.promote_if_better describes.
    """
    name = onnx_name(source.name)
    if not registry.holds_alias(source.name, alias, str(source.version)):
        return False
    registry.move_alias(name, alias, twin_version)
    time.sleep(settle_s)
    holder = registry.current_champion(source.name, alias)
    if holder is not None and registry.is_version(holder, source.version):
        return True
    theirs = holder.version.tags.get(tags.ONNX_VERSION) if holder is not None else None
    if theirs and not registry.holds_alias(name, alias, theirs):
        registry.move_alias(name, alias, theirs)
    return False
