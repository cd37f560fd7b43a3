"""What a sampled search is for Optuna: distributions from `sweep.space` (and grid keys as choices), the seeded
sampler, the pruners' warm-up, the study's name (a rerun of the same search resumes it) and where it is kept."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from fashion_mlops.config import load_params
from fashion_mlops.search import space
from helpers import tiny_params, write_params


def search_params(tmp_path: Path, **sweep: Any) -> Any:
    params = tiny_params(tmp_path, tmp_path, **{"sweep.grid": {}})
    params["sweep"] |= {
        "search": "tpe",
        "trials": 9,
        "seed": 3,
        "space": {
            "lr": {"low": 1e-4, "high": 0.1, "log": True},
            "batch_size": {"low": 16, "high": 128},
            "optimizer": ["adam", "sgd"],
        },
    } | sweep
    return load_params(write_params(tmp_path / "params.yaml", params))


def test_each_space_entry_becomes_the_distribution_its_parameter_needs(tmp_path: Path) -> None:
    params = search_params(tmp_path, grid={"arch": ["simple_cnn", "vgg_bn_small"]})
    found = space.distributions(params.sweep)
    assert list(found) == ["arch", "lr", "batch_size", "optimizer"]  # grid keys first, as choices
    assert found["arch"] == CategoricalDistribution(["simple_cnn", "vgg_bn_small"])
    assert found["lr"] == FloatDistribution(1e-4, 0.1, log=True)
    assert found["batch_size"] == IntDistribution(16, 128)
    assert found["optimizer"] == CategoricalDistribution(["adam", "sgd"])


def test_a_drawn_trial_is_a_cell_with_the_drawn_settings_and_a_readable_name(tmp_path: Path) -> None:
    params = search_params(tmp_path)
    cell = params.trial(7, {"lr": 0.00312345, "batch_size": 64, "optimizer": "sgd"})
    assert (cell.index, cell.train.lr, cell.train.batch_size, cell.train.optimizer) == (7, 0.00312345, 64, "sgd")
    assert cell.train.epochs == params.train.epochs  # what is not drawn comes from train
    assert cell.name == "trial-007-lr=0.00312-batch_size=64-optimizer=sgd"


def test_the_seeded_sampler_draws_the_same_trials_again(tmp_path: Path) -> None:
    params = search_params(tmp_path)

    def draws(sweep: Any) -> list[dict[str, Any]]:
        study = optuna.create_study(sampler=space.sampler(sweep), direction="maximize")
        found = []
        for number in range(5):
            trial = study.ask(space.distributions(sweep))
            found.append(trial.params)
            study.tell(trial, float(number % 3))
        return found

    assert draws(params.sweep) == draws(params.sweep)
    assert draws(params.sweep) != draws(params.sweep.model_copy(update={"seed": 4}))
    assert isinstance(space.sampler(params.sweep), optuna.samplers.TPESampler)
    assert isinstance(
        space.sampler(params.sweep.model_copy(update={"search": "random"})), optuna.samplers.RandomSampler
    )


@pytest.mark.parametrize(("rule", "kind"), [("median", "MedianPruner"), ("asha", "SuccessiveHalvingPruner")])
def test_no_trial_is_pruned_before_its_warm_up_epochs(tmp_path: Path, rule: str, kind: str) -> None:
    params = search_params(tmp_path, prune=rule, prune_warmup=3)
    pruner = space.pruner(params.sweep)
    assert type(pruner).__name__ == kind
    study = optuna.create_study(pruner=pruner, direction="maximize")
    for value in (0.9, 0.9, 0.9):  # three good trials of 5 epochs, asking after each epoch as a sweep does
        trial = study.ask()
        for epoch in range(1, 6):
            trial.report(value, epoch)
            assert not trial.should_prune()
        study.tell(trial, value)
    poor = study.ask()
    verdicts = []
    for epoch in range(1, 6):
        poor.report(0.1, epoch)
        verdicts.append(poor.should_prune())
    assert verdicts[:2] == [False, False]  # epochs 1 and 2: warm-up
    assert verdicts[2]  # after epoch 3 a far worse trial goes


def test_no_pruner_with_prune_none(tmp_path: Path) -> None:
    assert isinstance(space.pruner(search_params(tmp_path).sweep), optuna.pruners.NopPruner)


def test_the_same_search_has_the_same_study_name_and_more_trials_continue_it(tmp_path: Path) -> None:
    params = search_params(tmp_path)
    name = space.study_name(params, "digest", threads=2)
    assert name == space.study_name(search_params(tmp_path), "digest", threads=2)
    assert name == space.study_name(search_params(tmp_path, trials=20), "digest", threads=2)
    assert name.startswith("tpe-")
    others = {
        space.study_name(search_params(tmp_path, seed=4), "digest", threads=2),
        space.study_name(search_params(tmp_path, prune="median"), "digest", threads=2),
        space.study_name(search_params(tmp_path, space={"lr": [0.1, 0.01]}), "digest", threads=2),
        space.study_name(params, "other data", threads=2),
        space.study_name(params, "digest", threads=1),
    }
    assert name not in others and len(others) == 5


def test_the_study_is_kept_beside_a_sqlite_store_else_in_the_working_directory() -> None:
    assert space.study_storage("sqlite:////srv/ml/mlflow.db") == "sqlite:////srv/ml/optuna.db"
    assert space.study_storage("sqlite:///mlflow.db") == "sqlite:///optuna.db"
    assert space.study_storage("http://127.0.0.1:5000") == "sqlite:///optuna.db"


def test_a_trial_trains_at_most_the_top_of_an_epochs_range(tmp_path: Path) -> None:
    assert space.max_epochs(search_params(tmp_path)) == 2  # tiny_params' train.epochs
    assert space.max_epochs(search_params(tmp_path, space={"epochs": {"low": 2, "high": 9}})) == 9
    assert space.max_epochs(search_params(tmp_path, space={"epochs": [3, 5]})) == 5


def test_a_time_budget_is_spent_once_its_seconds_have_passed() -> None:
    assert not space.Budget(None).spent()
    budget = space.Budget(0.05)
    assert not budget.spent()
    time.sleep(0.06)
    assert budget.spent()
