"""The model a runtime runs: the registry's champion by default, or a model named by URI or path, inspected first.

- torch: the pt2 model `models:/<registry.model_name>@<alias>` (inspected by tracking.model_files);
- onnx: its twin `models:/<registry.model_name>-onnx@<alias>`, or an .onnx file;
- openvino: the IR logged beside that twin, or an .xml file with its .bin.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from fashion_mlops.config import Params
from fashion_mlops.errors import UserError
from fashion_mlops.inference.exported_files import check_onnx_file, check_onnx_model_dir, check_openvino_dir
from fashion_mlops.inference.runtimes import OnnxRuntime, OpenVinoRuntime, Runtime, TorchRuntime
from fashion_mlops.tracking import tags


class NoModel(UserError):
    """The model to predict with is not there."""


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def champion_uri(params: Params, runtime: str) -> str:
    """Where the champion of `runtime` lives in the registry (the OpenVINO IR: the runs:/ folder of its twin)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from fashion_mlops.tracking.exports import onnx_name

    name, alias = params.registry.model_name, params.registry.alias
    if runtime == "torch":
        return f"models:/{name}@{alias}"
    if runtime == "onnx":
        return f"models:/{onnx_name(name)}@{alias}"
    try:
        twin = mlflow.MlflowClient().get_model_version_by_alias(onnx_name(name), alias)
    except MlflowException:
        raise NoModel(
            f"no {onnx_name(name)}@{alias} in the registry: run `dvc repro` (its export stage registers it)"
        ) from None
    uri = twin.tags.get(tags.OPENVINO_URI)
    if not uri:
        raise NoModel(f"{onnx_name(name)} v{twin.version} names no OpenVINO IR: run `dvc repro` to export again")
    return uri


def load_runtime(runtime: str, model: str | None, params: Params) -> tuple[Runtime, str]:
    """(the runtime with its model loaded, where the model came from)."""
    if model is None:
        from fashion_mlops.tracking.store import connect

        connect(params)
        model = champion_uri(params, runtime)
    threads = default_threads()
    with tempfile.TemporaryDirectory(prefix="fashion-mlops-predict-") as private:
        if runtime == "torch":
            from mlflow.exceptions import MlflowException

            from fashion_mlops.tracking.model_files import load_logged_model

            try:
                return TorchRuntime(load_logged_model(model)), model
            except MlflowException as error:  # no such model or alias
                raise NoModel(f"{model}: {error.message}") from None
        local = _private_copy(model, Path(private))
        if runtime == "onnx":
            if local.is_dir():  # a logged ONNX model: its MLmodel and files, then the ONNX file in it
                return OnnxRuntime(check_onnx_model_dir(local, model), threads), model
            check_onnx_file(local)
            return OnnxRuntime(local, threads), model
        return OpenVinoRuntime(check_openvino_dir(local), threads), model


def _private_copy(model: str, private: Path) -> Path:
    """The model's files copied into a fresh private folder, so the files loaded are the files inspected. A local
    .xml comes with its .bin; links are copied as links, and refused by the checks."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if "://" in model or model.startswith(("models:/", "runs:/")):
        try:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(private)))
        except MlflowException as error:
            raise NoModel(f"{model}: {error.message}") from None
    path, copy = Path(model), private / "model"
    if path.is_dir():
        shutil.copytree(path, copy, symlinks=True)
        return copy
    parts = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    copy.mkdir()
    for part in parts:
        if not part.is_file():
            raise NoModel(f"{part}: no such file" + (f" (the IR needs it beside {path.name})" if part != path else ""))
        shutil.copyfile(part, copy / part.name)
    return copy if path.suffix == ".xml" else copy / path.name
