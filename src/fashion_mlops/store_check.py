"""The check_store stage: make DVC rebuild what the tracking store lost.

DVC tracks reports/ (through dvc.lock), not the MLflow store or the TensorBoard logs. On a fresh clone, or after
`mlflow.db`, `mlruns/` or `runs/` was deleted, the reports name runs, models and registry versions that are not
there, and DVC alone would call the pipeline up to date. This stage runs first on every `dvc repro`
(`always_changed`): when the store no longer holds what a stage's report names, it removes that report, so DVC
reruns the stage that writes it. When everything is there it changes nothing, and nothing downstream reruns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import mlflow

from fashion_mlops.config import Params
from fashion_mlops.reports import Reports, write_json
from fashion_mlops.tracking import inventory
from fashion_mlops.tracking.store import check_reachable, open_store, tracking_uri


def run_store_check(params: Params, reports: Reports) -> list[str]:
    """Remove the reports whose runs, models, event files or registry versions are gone; one line per finding."""
    uri = tracking_uri(params)
    write_json(reports.store, {"tracking_uri": _without_credentials(uri), "experiment": params.tracking.experiment})
    if not params.tracking.enabled:
        return ["tracking is off (tracking.enabled: false): no store to check"]
    check_reachable(uri)
    open_store(params)
    lines = []
    sweep_problem = _sweep_problem(reports, params.tracking.log_models)
    evaluation_problem = _evaluation_problem(reports)
    if sweep_problem:
        lines.append(
            f"{reports.best_run} names what {_without_credentials(uri)} does not hold ({sweep_problem}): "
            "removed, so this `dvc repro` trains the sweep again"
        )
        reports.best_run.unlink(missing_ok=True)
    if sweep_problem or evaluation_problem:
        if reports.evaluation.exists():
            reason = evaluation_problem or "its sweep is trained again"
            lines.append(f"{reports.evaluation}: removed ({reason}), so this `dvc repro` evaluates again")
        reports.evaluation.unlink(missing_ok=True)
    export_problem = _export_problem(reports)
    if sweep_problem or evaluation_problem or export_problem:
        if reports.export.exists():
            reason = export_problem or "the champion is evaluated again"
            lines.append(f"{reports.export}: removed ({reason}), so this `dvc repro` exports again")
        reports.export.unlink(missing_ok=True)
    if not lines:
        where = _without_credentials(uri)
        lines.append(f"{where} holds every run, model, event file and registry version that reports/ names")
    return lines


def _sweep_problem(reports: Reports, log_models: bool) -> str | None:
    """What the store lacks of the sweep that reports/best_run.json and sweep.json describe; None if all is there."""
    best = _read(reports.best_run)
    summary = _read(reports.sweep_json)
    if best is None:
        return None  # no report yet: DVC runs the sweep anyway
    if not isinstance(best, dict) or not isinstance(summary, dict) or not isinstance(summary.get("runs"), dict):
        return "the reports are unreadable"
    problem = inventory.run_problem(best.get("sweep_run_id"))
    if problem is None and log_models:
        problem = inventory.model_problem(best.get("model_uri"))
    for cell in summary["runs"].values():
        if problem is not None:
            break
        if isinstance(cell, dict) and cell.get("status") == "FINISHED":
            problem = inventory.run_problem(cell.get("run_id")) or _events_problem(cell.get("run_id"))
    return problem


def _events_problem(run_id: str) -> str | None:
    return inventory.events_problem(mlflow.MlflowClient().get_run(run_id))


def _evaluation_problem(reports: Reports) -> str | None:
    evaluation = _read(reports.evaluation)
    if evaluation is None:
        return None
    if not isinstance(evaluation, dict):
        return "it is unreadable"
    name = evaluation.get("model_name")
    if not isinstance(name, str):
        return "it names no registered model"
    return inventory.version_problem(name, evaluation.get("model_version"), evaluation.get("model_uri"))


def _export_problem(reports: Reports) -> str | None:
    """What the store lacks of the ONNX version that reports/export.json names (its OpenVINO IR is logged in the
    same run)."""
    exported = _read(reports.export)
    if exported is None:
        return None
    onnx = exported.get("onnx") if isinstance(exported, dict) else None
    if not isinstance(onnx, dict) or not isinstance(onnx.get("model_name"), str):
        return "it is unreadable"
    return inventory.version_problem(
        onnx["model_name"], onnx.get("model_version"), onnx.get("model_uri")
    ) or inventory.model_problem(onnx.get("model_uri"))


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "unreadable"


def _without_credentials(uri: str) -> str:
    """The URI without a user name or password, so reports never hold a secret."""
    parsed = urlparse(uri)
    if parsed.username is None and parsed.password is None:
        return uri
    return parsed._replace(netloc=parsed.hostname + (f":{parsed.port}" if parsed.port else "")).geturl()
