"""The export stage: the alias holder that evaluate left in reports/champion.json, as ONNX and OpenVINO IR.

Nothing is written, logged or registered until every runtime has passed parity on the whole test set: the files are
made in a private folder beside models/, checked, registered, and only then moved into place.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.entities.model_registry import ModelVersion

from fashion_mlops.config import Params
from fashion_mlops.data.manifest import Manifest
from fashion_mlops.data.splits import load_split
from fashion_mlops.errors import NotInStore
from fashion_mlops.export.convert import onnx_signature, to_onnx, to_openvino
from fashion_mlops.export.parity import (
    MAX_ACCURACY_DIFF,
    MAX_PROBABILITY_DIFF,
    MIN_AGREEMENT,
    Outputs,
    ParityFailed,
    fidelity,
    parity_problem,
)
from fashion_mlops.export.timing import measure_speed
from fashion_mlops.inference import INPUT_NAME, OUTPUT_NAME
from fashion_mlops.inference.exported_files import check_onnx_file, check_openvino_dir
from fashion_mlops.inference.runtimes import LABELS, OnnxRuntime, OpenVinoRuntime, Runtime, TorchRuntime, model_input
from fashion_mlops.reports import Reports, write_json
from fashion_mlops.tracking import inventory
from fashion_mlops.tracking.exports import Twin, log_and_register
from fashion_mlops.tracking.model_files import load_logged_model
from fashion_mlops.tracking.store import connect, lock_path, tracking_uri

MODELS_DIR = Path("models")
ONNX_FILE = MODELS_DIR / "champion.onnx"
OPENVINO_DIR = MODELS_DIR / "openvino"
OPENVINO_XML = "champion.xml"
REGISTRY_LOCK_TIMEOUT_S = 900


def read_champion(reports: Reports) -> dict[str, Any]:
    """evaluate's record of the alias holder."""
    try:
        champion = json.loads(reports.champion.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        raise NotInStore(f"{reports.champion} is missing or unreadable: run `dvc repro` (evaluate writes it)") from None
    if not isinstance(champion, dict) or not all(champion.get(k) for k in ("model_name", "version", "model_uri")):
        raise NotInStore(f"{reports.champion} names no registry version: run `dvc repro` (evaluate writes it)")
    return champion


def run_export(params: Params, manifest: Manifest, reports: Reports) -> dict[str, Any]:
    """Export, check and measure the champion in three runtimes; register the ONNX twin; write the files."""
    import mlflow
    import torch
    from filelock import FileLock

    champion = read_champion(reports)
    connect(params)
    name, version = champion["model_name"], str(champion["version"])
    problem = inventory.version_problem(name, version, champion["model_uri"])
    if problem:
        raise NotInStore(f"{reports.champion}: {problem}; run `dvc repro` to evaluate again")
    source = mlflow.MlflowClient().get_model_version(name, version)
    test = load_split(manifest, Path(params.data.dir), "test")
    images, labels = test.images.numpy(), test.labels.numpy()
    threads = torch.get_num_threads()

    MODELS_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=MODELS_DIR) as private:
        work = Path(private)
        onnx_file, ir_dir = work / ONNX_FILE.name, work / OPENVINO_DIR.name
        ir_dir.mkdir()
        model = load_logged_model(f"models:/{name}/{version}")
        to_onnx(model, onnx_file)
        check_onnx_file(onnx_file)
        to_openvino(onnx_file, ir_dir / OPENVINO_XML)
        runtimes = [
            TorchRuntime(model),
            OnnxRuntime(onnx_file, threads),
            OpenVinoRuntime(check_openvino_dir(ir_dir), threads),
        ]
        results = measure_runtimes(runtimes, images, labels, params)
        onnx_sha256 = hashlib.sha256(onnx_file.read_bytes()).hexdigest()
        with FileLock(lock_path(tracking_uri(params)), timeout=REGISTRY_LOCK_TIMEOUT_S):
            example = model_input(images[:2])
            twin = log_and_register(
                source, onnx_file, onnx_sha256, ir_dir, onnx_signature(), example, params.registry.alias
            )
        _replace(onnx_file, ONNX_FILE)
        _replace(ir_dir, OPENVINO_DIR)
    report = export_report(source, twin, onnx_sha256, len(labels), threads, results, params)
    write_json(reports.export, report)
    return report


def export_report(
    source: ModelVersion,
    twin: Twin,
    onnx_sha256: str,
    test_images: int,
    threads: int,
    results: dict[str, Any],
    params: Params,
) -> dict[str, Any]:
    """reports/export.json: what was exported from which version, where it went, and how each runtime did."""
    import torch

    return {
        "model_name": source.name,
        "model_version": int(source.version),
        "alias": params.registry.alias,
        "run_id": source.run_id,
        "onnx": {
            "path": ONNX_FILE.as_posix(),
            "sha256": onnx_sha256,
            "model_name": twin.version.name,
            "model_version": int(twin.version.version),
            "model_uri": twin.version.tags.get("model_uri"),
            "has_alias": twin.has_alias,
            "input": INPUT_NAME,
            "output": OUTPUT_NAME,
        },
        "openvino": {"path": (OPENVINO_DIR / OPENVINO_XML).as_posix(), "inference_precision": "f32"},
        "test_images": test_images,
        "tta_flip": params.evaluate.tta_flip,
        "threads": threads,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "parity_bounds": {
            "min_agreement": MIN_AGREEMENT,
            "max_accuracy_diff": MAX_ACCURACY_DIFF,
            "max_probability_diff": MAX_PROBABILITY_DIFF,
        },
        "runtimes": results,
    }


def measure_runtimes(runtimes: list[Runtime], images: np.ndarray, labels: np.ndarray, params: Params) -> dict[str, Any]:
    """Accuracy and parity with PyTorch (the first runtime) on every test image, then speed; ParityFailed, naming
    each runtime that misses a bound, before anything is timed."""
    settings = params.evaluate
    outputs = {rt.name: Outputs.of(rt, images, settings.batch_size, settings.tta_flip) for rt in runtimes}
    reference = outputs[runtimes[0].name]
    fidelities = {name: fidelity(out, reference, labels) for name, out in outputs.items()}
    baseline = fidelities[runtimes[0].name]
    problems = [p for name, f in fidelities.items() if (p := parity_problem(LABELS[name], f, baseline))]
    if problems:
        raise ParityFailed(f"export refused, nothing was written or registered: {'; '.join(problems)}")
    return {
        rt.name: fidelities[rt.name].as_dict()
        | measure_speed(rt, images, params.export.latency_calls, params.export.throughput_batches).as_dict()
        for rt in runtimes
    }


def _replace(new: Path, target: Path) -> None:
    """Move `new` over `target` (a file or a folder), so a reader never sees a mix of two exports."""
    if target.is_dir() and not target.is_symlink():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old)
    else:
        new.replace(target)
