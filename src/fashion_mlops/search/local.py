"""A sampled search in this process: an Optuna study, kept in SQLite, asks for each trial's settings; the trial
trains as a child run, reports its validation accuracy after each epoch and stops when the pruner says so.

The study survives Ctrl-C: a rerun loads it, copies the trials it settled into the new sweep, trains an
interrupted trial's settings again, and asks for the rest.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from fashion_mlops.config import Params
from fashion_mlops.search import space
from fashion_mlops.train import EpochResult, TrialPruned

if TYPE_CHECKING:
    from tqdm import tqdm

    from fashion_mlops.data.splits import Splits
    from fashion_mlops.sweep import CellOutcome
    from fashion_mlops.tracking import SweepTracking

RUN_ID = "run_id"  # user attributes of an Optuna trial: its MLflow run, and
SETTLED = "settled"  # that it counts towards sweep.trials (finished, pruned or diverged; not interrupted)
FAILURE = "failure"


def open_study(params: Params, storage: str, name: str) -> optuna.Study:
    """The search's study, created or (with sweep.resume) loaded; with resume off, an earlier one is replaced."""
    space.quiet()
    sweep = params.sweep
    if not sweep.resume:
        with contextlib.suppress(KeyError):  # none yet
            optuna.delete_study(study_name=name, storage=storage)
    return optuna.create_study(
        storage=storage,
        study_name=name,
        sampler=space.sampler(sweep),
        pruner=space.pruner(sweep),
        direction="maximize",
        load_if_exists=True,
    )


def run_local_search(
    params: Params,
    study: optuna.Study,
    splits: Splits,
    tracking: SweepTracking,
    bar: tqdm,
    threads: int,
) -> list[CellOutcome]:
    """Train trials until `sweep.trials` are settled or `sweep.time_budget_s` is spent; returns every trial's
    outcome, earlier ones included."""
    from fashion_mlops.sweep import CellOutcome, run_cell  # late: sweep dispatches here

    outcomes = resume_trials(params, study, splits, tracking, bar, threads)
    distributions = space.distributions(params.sweep)
    budget = space.Budget(params.sweep.time_budget_s)
    while len(settled(study)) < params.sweep.trials and not budget.spent():
        trial = study.ask(distributions)
        outcome = CellOutcome(params.trial(trial.number, trial.params))
        outcomes.append(outcome)
        torch.set_num_threads(outcome.cell.train.threads or threads)
        run = tracking.runs.cell(outcome.cell)
        try:
            run_cell(outcome, splits, run, _reporter(trial, params.sweep.prune, outcome, bar, tracking.check))
        except BaseException:
            _requeue(study, trial.number, trial.params)
            raise
        _tell(study, trial, outcome)
    return sorted(outcomes, key=lambda o: o.cell.index)


def settled(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count towards sweep.trials."""
    return [t for t in study.get_trials(deepcopy=False) if t.state.is_finished() and t.user_attrs.get(SETTLED)]


def resume_trials(
    params: Params, study: optuna.Study, splits: Splits, tracking: SweepTracking, bar: tqdm, threads: int
) -> list[CellOutcome]:
    """Outcomes of the trials an earlier run of this study settled, copied into this sweep; trials it left open
    (interrupted, or its process killed) are queued to train again."""
    from fashion_mlops.sweep import CellOutcome, run_cell

    outcomes = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.RUNNING:  # the process training it died
            _requeue(study, trial.number, trial.params)
        if not trial.user_attrs.get(SETTLED):  # queued, or interrupted (and queued again)
            continue
        outcome = CellOutcome(params.trial(trial.number, trial.params))
        outcomes.append(outcome)
        reused = tracking.reuse_trial(outcome.cell, trial.user_attrs.get(RUN_ID, ""))
        if reused is not None:
            outcome.run_id, outcome.history, outcome.duration_s = reused.run_id, reused.history, reused.duration_s
            outcome.model_uri, outcome.reused_from = reused.model_uri, reused.reused_from
            outcome.status = "PRUNED" if trial.state == TrialState.PRUNED else "FINISHED"
            outcome.failure = trial.user_attrs.get(FAILURE)
            bar.update(outcome.cell.train.epochs)
        elif trial.state == TrialState.COMPLETE:  # its run or model is gone: train it again (Optuna has its value)
            torch.set_num_threads(outcome.cell.train.threads or threads)
            reporter = _reporter(None, params.sweep.prune, outcome, bar, tracking.check)
            run_cell(outcome, splits, tracking.runs.cell(outcome.cell), reporter)
        else:  # pruned or diverged, its run gone: listed without metrics
            outcome.status = "PRUNED" if trial.state == TrialState.PRUNED else "FAILED"
            outcome.failure = trial.user_attrs.get(FAILURE, "its run is no longer in the store")
            bar.update(outcome.cell.train.epochs)
    return outcomes


def _reporter(
    trial: optuna.Trial | None, rule: str, outcome: CellOutcome, bar: tqdm, check: Callable[[], None]
) -> Callable[[str, EpochResult], None]:
    """After each epoch: the bar, the export process's health, and the pruner's verdict (raising TrialPruned)."""
    from fashion_mlops.sweep import show_epoch

    epochs = outcome.cell.train.epochs

    def on_epoch(name: str, result: EpochResult) -> None:
        show_epoch(bar, name, result.val_accuracy)
        check()
        if trial is None or result.epoch >= epochs:
            return
        trial.report(result.val_accuracy, result.epoch)
        if trial.should_prune():
            bar.update(epochs - result.epoch)
            raise TrialPruned(space.pruned_reason(rule, result.epoch, epochs, result.val_accuracy))

    return on_epoch


def _tell(study: optuna.Study, trial: optuna.Trial, outcome: CellOutcome) -> None:
    """Record the trial's result: its final validation accuracy, pruned, or failed (diverged)."""
    trial.set_user_attr(SETTLED, True)
    if outcome.run_id is not None:
        trial.set_user_attr(RUN_ID, outcome.run_id)
    if outcome.failure:
        trial.set_user_attr(FAILURE, outcome.failure)
    if outcome.status == "FINISHED":
        study.tell(trial, outcome.history[-1].val_accuracy)
    elif outcome.status == "PRUNED":
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, state=TrialState.FAIL)


def _requeue(study: optuna.Study, number: int, values: dict) -> None:
    """An interrupted trial ends FAIL (not settled) and its settings are queued, so a rerun trains them first."""
    with warnings.catch_warnings():  # enqueue_trial is marked experimental in Optuna
        warnings.simplefilter("ignore")
        study.enqueue_trial(values)
    study.tell(number, state=TrialState.FAIL)
