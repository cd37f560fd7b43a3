"""What a sampled search is, for Optuna: the distributions of `sweep.space`, the seeded sampler, the pruner, and a
name that identifies the study so that a rerun resumes it."""

from __future__ import annotations

import hashlib
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from fashion_mlops.config import Params, SpaceRange, SweepConfig, numeric_kind
from fashion_mlops.sources import code_version

MEDIAN_STARTUP_TRIALS = 2  # finished trials the median rule needs before it prunes (a median of one is no median)
ASHA_REDUCTION_FACTOR = 3  # ASHA keeps the best third at each rung, Optuna's and Ray Tune's default
TPE_MAX_STARTUP_TRIALS = 10  # TPE draws its first trials at random: a third of the budget, at most Optuna's 10


def quiet() -> None:
    """Optuna logs each trial at INFO; the sweep's bar and tables say it already."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def distributions(sweep: SweepConfig) -> dict[str, BaseDistribution]:
    """One Optuna distribution per searched parameter (grid keys are choices too), in params order."""
    return {key: _distribution(key, choice) for key, choice in sweep.choices().items()}


def _distribution(key: str, choice: list[Any] | SpaceRange) -> BaseDistribution:
    if isinstance(choice, list):
        return CategoricalDistribution(choice)
    if numeric_kind(key) is int:
        return IntDistribution(int(choice.low), int(choice.high), log=choice.log)
    return FloatDistribution(float(choice.low), float(choice.high), log=choice.log)


def sampler(sweep: SweepConfig) -> optuna.samplers.BaseSampler:
    """The seeded sampler: trials drawn in the same order give the same settings."""
    if sweep.search == "random":
        return optuna.samplers.RandomSampler(seed=sweep.seed)
    startup = max(1, min(TPE_MAX_STARTUP_TRIALS, sweep.trials // 3))
    return optuna.samplers.TPESampler(seed=sweep.seed, n_startup_trials=startup)


def pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    """No trial stops before it trained `prune_warmup` epochs (the decision comes after an epoch)."""
    warmup = max(1, sweep.prune_warmup)
    if sweep.prune == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=warmup)
    if sweep.prune == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=warmup, reduction_factor=ASHA_REDUCTION_FACTOR)
    return optuna.pruners.NopPruner()


class Budget:
    """`sweep.time_budget_s` from the moment the search starts its first trial: no trial starts once it is spent."""

    def __init__(self, seconds: float | None) -> None:
        self.seconds = seconds
        self.started = time.monotonic()

    def spent(self) -> bool:
        return self.seconds is not None and time.monotonic() - self.started >= self.seconds


def max_epochs(params: Params) -> int:
    """The most epochs one trial can train: the space's top value when epochs are searched."""
    choice = params.sweep.choices().get("epochs")
    if choice is None:
        return params.train.epochs
    return int(max(choice) if isinstance(choice, list) else choice.high)


def pruned_reason(rule: str, epoch: int, epochs: int, val_accuracy: float) -> str:
    """The reason a pruned trial's run records (as its failure tag) and the sweep's tables show."""
    return f"pruned after epoch {epoch} of {epochs} by the {rule} rule: val_accuracy {val_accuracy:.4f}"


def study_name(params: Params, data_digest: str, threads: int) -> str:
    """The same search (space, sampler, pruner, fixed settings, data, code) has the same name, so a rerun resumes
    its study; `sweep.trials` is left out, so raising it goes on with the trials already done."""
    sweep = params.sweep
    identity = repr(
        (
            sweep.search,
            sweep.seed,
            sweep.prune,
            sweep.prune_warmup,
            sorted((key, repr(choice)) for key, choice in sweep.choices().items()),
            sorted(params.train.model_dump().items()),
            params.model.arch,
            params.data.val_size,
            params.data.subset,
            data_digest,
            code_version(),
            version("torch"),
            threads,
        )
    )
    return f"{sweep.search}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def study_storage(tracking_uri: str) -> str:
    """The study's SQLite database: `optuna.db` beside a SQLite MLflow store, else in the working directory."""
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).with_name('optuna.db')}"
    return "sqlite:///optuna.db"
