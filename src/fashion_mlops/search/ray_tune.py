"""A sampled search on Ray Tune (`sweep.executor: ray`): Tune's OptunaSearch draws each trial from the same
distributions and seeded sampler as a local search, and its scheduler (ASHA, or the median stopping rule) stops
poor trials after an epoch.

Each trial runs `sweep.run_cell` in a Tune worker, as a cell runs on the Ray executor: its own child run, metrics
after every epoch, and, once it finished, its model logged from the worker. The trial reports its validation
accuracy to Tune after each epoch but the last; the last is reported once the model is logged, so a scheduler's
verdict never cuts an export short. A trial the scheduler stops is finished here: its run keeps the epochs it
trained, is tagged pruned and ends KILLED.

Tune keeps the study in memory: a rerun starts the search again.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fashion_mlops.executors.ray_cluster import (
    CollectedExports,
    Driver,
    capacity_of,
    ray_connection,
    remote_runs,
    request_for,
)
from fashion_mlops.search import space
from fashion_mlops.train import EpochResult, TrialPruned

if TYPE_CHECKING:
    from tqdm import tqdm

    from fashion_mlops.config import Cell, Params
    from fashion_mlops.data.splits import Splits
    from fashion_mlops.sweep import CellOutcome
    from fashion_mlops.tracking import CellRuns, SweepTracking

METRIC = "val_accuracy"
STATUS = "trial_status"  # in a trial's results: RUNNING after an epoch, then FINISHED or FAILED once it is done
RUN_ID = "run_id"
NUMBER = "trial_number"  # in a trial's config, beside the drawn values


def run_tune_search(
    params: Params,
    splits: Splits,
    tracking: SweepTracking,
    bar: tqdm,
    threads: int,
    study_name: str,
    tracking_uri: str,
) -> list[CellOutcome]:
    """Run `sweep.trials` trials on Ray Tune; returns every trial's outcome, pruned ones included."""
    space.quiet()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0, Tune prints no tables: the sweep's bar says it
    # the runs are in MLflow and TensorBoard: Tune writes only the JSON results its ResultGrid reads back
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    with ray_connection(params.sweep.ray_address, tracking_uri) as ray:
        from ray import tune
        from ray.tune.logger import JsonLoggerCallback

        request = request_for(params.train, capacity_of(ray), threads)
        driver = Driver(socket.gethostname(), os.getcwd())
        trainable = tune.with_resources(
            tune.with_parameters(
                tune_trial,
                params=params,
                splits=splits,
                runs=remote_runs(tracking.runs),
                threads=threads,
                driver=driver,
            ),
            {"cpu": request.cpus, "gpu": request.gpus},
        )
        trials = _trial_log(params, bar, tracking)
        with tempfile.TemporaryDirectory(prefix="fashion-mlops-tune-") as storage:
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=_searcher(params, study_name),
                    scheduler=_scheduler(params),
                    num_samples=params.sweep.trials,
                ),
                run_config=tune.RunConfig(
                    name=study_name,
                    storage_path=storage,
                    verbose=0,
                    callbacks=[trials, JsonLoggerCallback()],
                    failure_config=tune.FailureConfig(max_failures=0),
                ),
            )
            tuner.fit()
        return [_outcome(params, tracking.runs, trial) for trial in sorted(trials.done, key=lambda t: t.cell.index)]


def tune_trial(
    config: dict[str, Any], params: Params, splits: Splits, runs: CellRuns, threads: int, driver: Driver
) -> None:
    """One trial in a Tune worker: its cell trained and tracked as `sweep.run_cell` does it, reported per epoch."""
    import torch
    from ray import tune

    from fashion_mlops.sweep import CellOutcome, run_cell
    from fashion_mlops.tracking.exporter import export_model

    if socket.gethostname() == driver.host:
        os.chdir(driver.cwd)  # relative store, artifact and TensorBoard paths mean what they mean to the sweep
    outcome = CellOutcome(trial_cell(params, config))
    torch.set_num_threads(outcome.cell.train.threads or threads)
    run = runs.cell(outcome.cell)

    def on_epoch(name: str, result: EpochResult) -> None:
        if result.epoch >= outcome.cell.train.epochs:
            return  # reported once the model is logged
        try:
            tune.report({**result.as_dict(), STATUS: "RUNNING", RUN_ID: run.run_id})
        except SystemExit:  # Tune stops a trial its scheduler prunes by raising this in report()
            epochs = outcome.cell.train.epochs
            reason = space.pruned_reason(params.sweep.prune, result.epoch, epochs, result.val_accuracy)
            raise TrialPruned(reason) from None

    run_cell(outcome, splits, run, on_epoch)
    if outcome.status == "PRUNED":
        return  # Tune stopped the trial: its session takes no more reports
    exports = getattr(runs, "exports", None)
    for export in exports.items if isinstance(exports, CollectedExports) else []:
        export_model(export)
    final = outcome.final.as_dict() if outcome.final else {METRIC: 0.0}
    with contextlib.suppress(SystemExit):  # a stop after the last report: the trial is done anyway
        tune.report({**final, STATUS: outcome.status, RUN_ID: run.run_id})


def trial_cell(params: Params, config: dict[str, Any]) -> Cell:
    """The cell of the trial Tune runs with `config`: the drawn values, numbered in the order they were drawn."""
    values = {k: v for k, v in config.items() if k != NUMBER}
    return params.trial(int(config[NUMBER]), values)


def _searcher(params: Params, study_name: str) -> Any:
    """Tune's OptunaSearch over the search's distributions, with its seeded sampler; each suggestion carries its
    number (the order Optuna drew it in), which names the trial's run."""
    from ray.tune.search.optuna import OptunaSearch

    class NumberedOptunaSearch(OptunaSearch):
        def __init__(self, budget_s: float | None, **settings: Any) -> None:
            super().__init__(**settings)
            self.drawn = 0
            self.budget = space.Budget(budget_s)

        def suggest(self, trial_id: str) -> dict | str | None:
            if self.budget.spent():
                return self.FINISHED  # the running trials finish; no new one starts
            config = super().suggest(trial_id)
            if isinstance(config, dict):
                config, self.drawn = {**config, NUMBER: self.drawn}, self.drawn + 1
            return config

    return NumberedOptunaSearch(
        params.sweep.time_budget_s,
        space=space.distributions(params.sweep),
        metric=METRIC,
        mode="max",
        sampler=space.sampler(params.sweep),
        study_name=study_name,
    )


def _scheduler(params: Params) -> Any:
    """ASHA or the median stopping rule on validation accuracy per epoch, after `prune_warmup` epochs."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    sweep = params.sweep
    warmup = max(1, sweep.prune_warmup)
    if sweep.prune == "asha":
        # max_t past the last epoch: ASHA stops a trial reaching max_t, which would cut its model export short
        return ASHAScheduler(
            time_attr="epoch",
            metric=METRIC,
            mode="max",
            max_t=space.max_epochs(params) + 1,
            grace_period=warmup,
            reduction_factor=space.ASHA_REDUCTION_FACTOR,
        )
    if sweep.prune == "median":
        return MedianStoppingRule(
            time_attr="epoch",
            metric=METRIC,
            mode="max",
            grace_period=warmup,
            min_samples_required=space.MEDIAN_STARTUP_TRIALS,
            # never pause a trial to let a waiting one run: a paused function trial restarts from its first epoch
            min_time_slice=float("inf"),
        )
    return FIFOScheduler()


@dataclass
class _Trial:
    """What this process saw of one Tune trial: its settings, each result it reported, and its error if any."""

    cell: Cell
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None


def _trial_log(params: Params, bar: tqdm, tracking: SweepTracking) -> Any:
    """A Tune callback, in this process: each epoch on the sweep's bar, the sweep's checks between results (Ctrl-C,
    the export process), and every trial's results for the sweep's outcomes."""
    from ray.tune import Callback

    class TrialLog(Callback):
        def __init__(self, params: Params, bar: tqdm, tracking: SweepTracking) -> None:
            self.params, self.bar, self.tracking = params, bar, tracking
            self.trials: dict[str, _Trial] = {}

        def __getstate__(self) -> dict[str, Any]:
            return {"trials": self.trials}  # Tune saves its callbacks; the bar and the sweep stay here

        @property
        def done(self) -> list[_Trial]:
            return list(self.trials.values())

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.trials[trial.trial_id] = _Trial(trial_cell(self.params, trial.config))

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            from fashion_mlops import interrupts
            from fashion_mlops.sweep import show_epoch

            seen = self.trials[trial.trial_id]
            seen.results.append({k: result[k] for k in (*EpochResult.__dataclass_fields__, STATUS, RUN_ID)})
            show_epoch(self.bar, seen.cell.name, float(result[METRIC]))
            interrupts.check()
            self.tracking.check()

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._settle(self.trials[trial.trial_id])

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            seen = self.trials[trial.trial_id]
            error = trial.get_pickled_error() or trial.get_error()
            seen.error = f"{type(error).__name__}: {error}"[:500] if error is not None else "the trial failed"
            self._settle(seen)

        def _settle(self, seen: _Trial) -> None:
            """The epochs a trial did not train (pruned, failed) still count on the bar."""
            epochs = seen.cell.train.epochs
            self.bar.update(max(0, epochs - len(seen.results)))

    return TrialLog(params, bar, tracking)  # not captured: Tune pickles the class with its closures


def _outcome(params: Params, runs: CellRuns, trial: _Trial) -> CellOutcome:
    """A trial's outcome from its results; a trial the scheduler stopped has its run finished as pruned."""
    from fashion_mlops.sweep import CellOutcome

    outcome = CellOutcome(trial.cell)
    fields = EpochResult.__dataclass_fields__
    outcome.history = [EpochResult(**{k: row[k] for k in fields}) for row in trial.results]
    outcome.run_id = next((row[RUN_ID] for row in reversed(trial.results) if row.get(RUN_ID)), None)
    outcome.duration_s = sum(r.epoch_duration_s for r in outcome.history)
    last = trial.results[-1][STATUS] if trial.results else None
    if trial.error is not None:
        outcome.status, outcome.failure = "FAILED", trial.error
        _end_failed(outcome)
    elif last in ("FINISHED", "FAILED"):
        outcome.status = last
        outcome.model_uri = _model_uri(outcome.run_id) if last == "FINISHED" else None
    else:
        outcome.status = "PRUNED"
        last_epoch = outcome.history[-1] if outcome.history else None
        outcome.failure = (
            space.pruned_reason(
                params.sweep.prune, last_epoch.epoch, outcome.cell.train.epochs, last_epoch.val_accuracy
            )
            if last_epoch
            else "pruned before its first epoch"
        )
        _finish_pruned(runs, outcome)
    return outcome


def _model_uri(run_id: str | None) -> str | None:
    """The model a finished trial's worker logged, as its run records it."""
    if run_id is None:
        return None
    import mlflow

    from fashion_mlops.tracking import tags
    from fashion_mlops.tracking.runs import tracking_writes

    with tracking_writes():
        return mlflow.MlflowClient().get_run(run_id).data.tags.get(tags.MODEL_URI)


def _finish_pruned(runs: CellRuns, outcome: CellOutcome) -> None:
    """End as pruned the run of a trial the scheduler stopped (its worker may have ended it already)."""
    if outcome.run_id is None or not outcome.history:
        return
    import mlflow

    from fashion_mlops.tracking import tags
    from fashion_mlops.tracking.tensorboard import TensorBoardRun

    run = runs.cell(outcome.cell)
    found = mlflow.MlflowClient().get_run(outcome.run_id)
    if found.info.status != "RUNNING" and found.data.tags.get(tags.TRIAL_STATE) == "pruned":
        return
    run.run_id = outcome.run_id
    log_dir = found.data.tags.get(tags.TENSORBOARD)
    run.tensorboard = TensorBoardRun(Path(log_dir)) if log_dir else None
    run.prune(outcome.history, outcome.duration_s, outcome.failure or "pruned")


def _end_failed(outcome: CellOutcome) -> None:
    """End FAILED the run of a trial that raised (its worker may have ended it already)."""
    if outcome.run_id is None:
        return
    import mlflow

    from fashion_mlops.tracking.runs import end_run, tracking_writes

    with tracking_writes():
        if mlflow.MlflowClient().get_run(outcome.run_id).info.status == "RUNNING":
            end_run(outcome.run_id, "FAILED", outcome.failure)
