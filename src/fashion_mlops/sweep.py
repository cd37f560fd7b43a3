"""The train_sweep stage: one MLflow parent run, one child run per grid cell, best run chosen on validation."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import torch
from mlflow.entities import RunStatus
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from fashion_mlops import tracking
from fashion_mlops.config import Params, RunSpec
from fashion_mlops.datasets import Splits, load_split, train_val_split
from fashion_mlops.engine import EpochResult, TrainingDiverged, pick_device, train
from fashion_mlops.files import write_json, write_text
from fashion_mlops.grid import cell_name
from fashion_mlops.manifest import Manifest, load_manifest
from fashion_mlops.models import build_model

REPORTS = Path("reports")
METRIC_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch_duration_s")


class NoFinishedRuns(RuntimeError):
    """Every grid cell failed, so there is no model to choose."""


@dataclass
class CellOutcome:
    """What one grid cell produced, trained now or reused from an earlier identical run."""

    index: int
    name: str
    spec: RunSpec
    status: str = "RUNNING"
    run_id: str | None = None
    model_uri: str | None = None
    history: list[EpochResult] = field(default_factory=list)
    duration_s: float = 0.0
    reused_from: str | None = None
    failure: str | None = None

    @property
    def final(self) -> EpochResult | None:
        return self.history[-1] if self.history else None


def load_training_data(params: Params) -> tuple[Manifest, Splits]:
    manifest = load_manifest(params.data.manifest)
    full_train = load_split(manifest, Path(params.data.dir), "train")
    return manifest, train_val_split(full_train, params.data.val_size, params.train.seed, params.data.subset)


def run_sweep(params: Params, params_path: Path, reports: Path = REPORTS) -> list[CellOutcome]:
    """Train every grid cell, log each to MLflow and TensorBoard, write the results table and the best run."""
    manifest, splits = load_training_data(params)
    cells = params.cells()
    experiment_id = tracking.connect(params)
    tags = tracking.common_tags(params_path)
    dataset = mlflow.data.from_numpy(
        features=splits.train.images.numpy(),
        targets=splits.train.labels.numpy(),
        source=str(Path(params.data.dir).resolve()),
        name=manifest.name,
        digest=manifest.digest(),
    )
    parent = mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
        tags=tags | {tracking.TAG_KIND: "sweep"},
    )
    outcomes: list[CellOutcome] = []
    try:
        mlflow.log_params(_sweep_params(params, len(cells)))
        total_epochs = sum(spec.train.epochs for spec in cells)
        with tqdm(total=total_epochs, desc="sweep", unit="epoch", dynamic_ncols=True) as bar:
            for index, spec in enumerate(cells):
                outcome = CellOutcome(index, cell_name(index, spec.swept), spec)
                outcomes.append(outcome)
                run_cell(outcome, params, splits, manifest, dataset, tags, parent.info.run_id, bar)
        best = select_best(outcomes)
        write_reports(outcomes, best, parent.info.run_id, reports)
        mlflow.log_metrics({"best_val_accuracy": best.final.val_accuracy, "finished_runs": _count(outcomes)})
        mlflow.set_tags({"best_run_id": best.run_id, "best_run_name": best.name})
        mlflow.log_artifacts(str(reports), artifact_path="reports")
    except KeyboardInterrupt:
        tracking.end_run(RunStatus.KILLED, "interrupted")
        raise
    except BaseException as error:
        tracking.end_run(RunStatus.FAILED, f"{type(error).__name__}: {error}")
        raise
    tracking.end_run(RunStatus.FINISHED)
    print_summary(outcomes, best)
    return outcomes


def run_cell(
    outcome: CellOutcome,
    params: Params,
    splits: Splits,
    manifest: Manifest,
    dataset: Any,
    tags: dict[str, str],
    sweep_run_id: str,
    bar: tqdm,
) -> None:
    """Train (or reuse) one grid cell as a child run; a diverging run is marked FAILED and the sweep goes on."""
    spec = outcome.spec
    fingerprint = tracking.run_fingerprint(spec, params, manifest.digest())
    tensorboard_dir = Path(params.tracking.tensorboard_dir) / sweep_run_id[:8] / outcome.name
    run_tags = tags | {
        tracking.TAG_KIND: "cell",
        tracking.TAG_SWEEP: sweep_run_id,
        tracking.TAG_FINGERPRINT: fingerprint,
        tracking.TAG_TENSORBOARD: str(tensorboard_dir),
    }
    earlier = tracking.find_reusable_run(fingerprint) if params.sweep.resume else None
    child = mlflow.start_run(run_name=outcome.name, nested=True, tags=run_tags)
    outcome.run_id = child.info.run_id
    if earlier is not None:
        tracking.copy_run(earlier, outcome.run_id)
        outcome.history, outcome.duration_s = tracking.history_of(earlier)
        outcome.model_uri, outcome.reused_from, outcome.status = earlier.model_uri, earlier.run_id, "FINISHED"
        tracking.end_run(RunStatus.FINISHED)
        bar.update(spec.train.epochs)
        return
    logger = tracking.RunLogger(params, spec, outcome.name, tensorboard_dir)
    started = time.perf_counter()

    def on_epoch_end(result: EpochResult, model: torch.nn.Module) -> None:
        outcome.history.append(result)
        logger.log_epoch(result, model)
        bar.set_postfix_str(f"{outcome.name[:40]} val_acc={result.val_accuracy:.4f}")
        bar.update(1)

    try:
        torch.manual_seed(spec.train.seed)
        model = build_model(spec.arch)
        logger.log_start(model, splits.train, dataset)
        train(model, splits, spec.train, pick_device(spec.train.device), on_epoch_end)
        outcome.duration_s = time.perf_counter() - started
        outcome.model_uri = logger.log_finish(model, outcome.history, splits.val.images)
        outcome.status = "FINISHED"
        tracking.end_run(RunStatus.FINISHED)
    except TrainingDiverged as error:
        outcome.status, outcome.failure = "FAILED", str(error)
        bar.update(spec.train.epochs - len(outcome.history))
        tracking.end_run(RunStatus.FAILED, f"diverged: {error}")
    except KeyboardInterrupt:
        tracking.end_run(RunStatus.KILLED, "interrupted")
        raise
    except BaseException as error:
        tracking.end_run(RunStatus.FAILED, f"{type(error).__name__}: {error}")
        raise
    finally:
        logger.close()


def select_best(outcomes: list[CellOutcome]) -> CellOutcome:
    """Highest final validation accuracy among finished runs; ties go to the lower validation loss."""
    finished = [o for o in outcomes if o.status == "FINISHED" and o.final is not None]
    if not finished:
        reasons = "; ".join(f"{o.name}: {o.failure}" for o in outcomes)
        raise NoFinishedRuns(f"no grid cell finished training ({reasons}); the registry was left untouched")
    return max(finished, key=lambda o: (o.final.val_accuracy, -o.final.val_loss, -o.index))


def results_table(outcomes: list[CellOutcome]) -> pd.DataFrame:
    """The tutorial's results table: one row per run and epoch, with every swept parameter."""
    rows = []
    for o in outcomes:
        for result in o.history:
            rows.append(
                {
                    "run": o.name,
                    "run_id": o.run_id,
                    "status": o.status,
                    **result.as_dict(),
                    "run_duration_s": o.duration_s,
                    **{k: _plain(v) for k, v in o.spec.swept.items()},
                }
            )
    return pd.DataFrame(rows)


def write_reports(outcomes: list[CellOutcome], best: CellOutcome, sweep_run_id: str, reports: Path) -> None:
    table = results_table(outcomes)
    write_text(reports / "sweep.csv", table.to_csv(index=False))
    runs = {
        o.name: {
            "status": o.status,
            "run_id": o.run_id,
            "epochs": len(o.history),
            **({k: v for k, v in o.final.as_dict().items() if k != "epoch"} if o.final else {}),
            "run_duration_s": o.duration_s,
        }
        for o in outcomes
    }
    write_json(
        reports / "sweep.json",
        {
            "best_run": best.name,
            "best_val_accuracy": best.final.val_accuracy,
            "best_val_loss": best.final.val_loss,
            "finished_runs": _count(outcomes),
            "total_runs": len(outcomes),
            "runs": runs,
            "rows": table.to_dict(orient="records"),
        },
    )
    write_json(
        reports / "best_run.json",
        {
            "run_name": best.name,
            "run_id": best.run_id,
            "sweep_run_id": sweep_run_id,
            "model_uri": best.model_uri,
            "arch": best.spec.arch,
            "val_accuracy": best.final.val_accuracy,
            "val_loss": best.final.val_loss,
            "params": {k: _plain(v) for k, v in best.spec.flat_params().items()},
            "reused_from": best.reused_from,
        },
    )


def print_summary(outcomes: list[CellOutcome], best: CellOutcome) -> None:
    table = Table(title="Sweep results (final epoch)")
    swept_keys = list(outcomes[0].spec.swept) if outcomes else []
    for column in ["run", *swept_keys, "status", "val_acc", "val_loss", "train_acc", "time_s"]:
        table.add_column(column, justify="left" if column in ("run", "status") else "right")
    for o in outcomes:
        f = o.final
        cells = [
            str(o.index),
            *[str(o.spec.swept[k]) for k in swept_keys],
            o.status + (" (reused)" if o.reused_from else ""),
        ]
        cells += [f"{f.val_accuracy:.4f}", f"{f.val_loss:.4f}", f"{f.accuracy:.4f}"] if f else ["-", "-", "-"]
        cells.append(f"{o.duration_s:.1f}")
        table.add_row(*cells, style="bold green" if o is best else None)
    console = Console(width=160)
    console.print(table)
    console.print(f"best: {best.name} (val_accuracy {best.final.val_accuracy:.4f}), run id {best.run_id}")


def _sweep_params(params: Params, n_runs: int) -> dict[str, Any]:
    fixed = {k: v for k, v in params.train.model_dump().items() if k not in params.sweep.grid}
    return {
        **fixed,
        "arch": params.model.arch,
        "grid": str(params.sweep.grid),
        "runs": n_runs,
        "val_size": params.data.val_size,
        "subset": params.data.subset,
    }


def _count(outcomes: list[CellOutcome]) -> int:
    return sum(o.status == "FINISHED" for o in outcomes)


def _plain(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)
