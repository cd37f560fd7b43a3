"""End to end: a sampled search (`sweep.search: tpe`, `sweep.prune: median`) from a real `dvc repro`.

One module-scoped fixture copies the project into a temporary git + DVC repository whose params.yaml asks for a
6-trial TPE search with median pruning on the conftest sample (a fixed seed, which prunes some trials), and runs
`dvc repro evaluate`. The tests read what it left: the MLflow runs (pruned ones KILLED and tagged), the reports,
the TensorBoard events and the registry alias. Two more sweeps run the same search directly: one to show that the
seed reproduces it, one interrupted with Ctrl-C and rerun, to show that the study resumes.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from test_pipeline import Pipeline, commit_all, copy_project, e2e_params, init_repo, run_command, subprocess_env

from fashion_mlops.tracking import tags
from helpers import cli_env, start_sweep, tiny_params, write_params

pytestmark = pytest.mark.slow

TRIALS = 6
EPOCHS = 4
SEARCH = {
    "search": "tpe",
    "trials": TRIALS,
    "seed": 3,  # with this seed the median rule prunes some of the six trials on the sample
    "space": {"lr": {"low": 1e-4, "high": 0.3, "log": True}, "batch_size": [16, 64]},
    "prune": "median",
    "prune_warmup": 1,
    "grid": {},
}
SWEEP_TIMEOUT_S = 600
COMPARED = ("run", "status", "epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "batch_size")


def trials_of(client: MlflowClient, experiment: str) -> tuple[Any, list[Any]]:
    """(the newest sweep's parent run, its child runs by trial number)."""
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parent = max((r for r in found if r.data.tags.get(tags.KIND) == "sweep"), key=lambda r: r.info.start_time)
    children = [r for r in found if r.data.tags.get(tags.SWEEP) == parent.info.run_id]
    return parent, sorted(children, key=lambda r: int(r.data.tags[tags.TRIAL]))


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return [{k: row[k] for k in COMPARED} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def searched(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    root = tmp_path_factory.mktemp("search") / "repo"
    copy_project(root)
    params = e2e_params(sample_dataset, root)
    params["train"]["epochs"] = EPOCHS
    params["sweep"] = dict(SEARCH)
    write_params(root / "params.yaml", params)
    env = subprocess_env(root)
    init_repo(root, env)
    commit_all(root, env, "e2e: a TPE search with median pruning")
    repro = run_command(["dvc", "repro", "evaluate"], root, env)
    return Pipeline(root=root, env=env, params=params, repro=repro)


def direct_params(sample_dataset: Path, root: Path) -> dict[str, Any]:
    """The same search as the repro's, with absolute paths in a directory of its own."""
    params = tiny_params(sample_dataset, root, **{"train.epochs": EPOCHS})
    params["sweep"] = dict(SEARCH)
    params["tracking"]["histogram_every"] = EPOCHS + 3  # as e2e_params
    return params


def test_repro_runs_the_search_and_reports_every_trial(searched: Pipeline) -> None:
    assert "Running stage 'train_sweep'" in searched.repro.stdout
    summary = searched.report("sweep.json")
    assert summary["total_runs"] == TRIALS
    assert summary["pruned_runs"] >= 1, "the seed was chosen so that the median rule prunes"
    assert summary["finished_runs"] >= 2
    assert summary["finished_runs"] + summary["pruned_runs"] == TRIALS
    statuses = {name: run["status"] for name, run in summary["runs"].items()}
    assert summary["runs"][summary["best_run"]]["status"] == "FINISHED"
    assert sorted(name.split("-")[1] for name in statuses) == [f"{n:03d}" for n in range(TRIALS)]


def test_pruned_trials_are_killed_runs_tagged_pruned_that_keep_the_epochs_they_trained(searched: Pipeline) -> None:
    client = searched.client()
    parent, children = trials_of(client, searched.params["tracking"]["experiment"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search"] == "tpe" and parent.data.params["prune"] == "median"
    assert [int(run.data.tags[tags.TRIAL]) for run in children] == list(range(TRIALS))
    pruned = [run for run in children if run.data.tags.get(tags.TRIAL_STATE) == "pruned"]
    finished = [run for run in children if run.data.tags.get(tags.TRIAL_STATE) == "finished"]
    assert len(pruned) + len(finished) == TRIALS and pruned and finished
    for run in pruned:
        assert run.info.status == "KILLED"
        history = client.get_metric_history(run.info.run_id, "val_accuracy")
        reached = len(history)
        assert 1 <= reached < EPOCHS
        assert run.data.tags[tags.FAILURE].startswith(f"pruned after epoch {reached} of {EPOCHS} by the median rule")
        assert run.data.metrics["final_val_accuracy"] == history[-1].value
        assert tags.MODEL_URI not in run.data.tags
    for run in finished:
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == EPOCHS
        assert run.data.tags[tags.MODEL_URI].startswith("models:/")
    assert parent.data.metrics["pruned_runs"] == len(pruned)


def test_the_best_trial_is_a_finished_one_and_holds_the_alias(searched: Pipeline) -> None:
    client = searched.client()
    _, children = trials_of(client, searched.params["tracking"]["experiment"])
    best = searched.report("best_run.json")
    finished = {run.info.run_id: run for run in children if run.info.status == "FINISHED"}
    assert best["run_id"] in finished
    top = max(finished.values(), key=lambda run: run.data.metrics["final_val_accuracy"])
    assert best["val_accuracy"] == top.data.metrics["final_val_accuracy"]
    assert best["params"]["lr"] == float(finished[best["run_id"]].data.params["lr"])  # the drawn settings
    registry = searched.params["registry"]
    version = client.get_model_version_by_alias(registry["model_name"], registry["alias"])
    assert version.run_id == best["run_id"] == searched.report("evaluation.json")["run_id"]


def test_sweep_csv_and_tensorboard_show_the_pruned_trials_beside_the_finished(searched: Pipeline) -> None:
    rows = csv_rows(searched.root / "reports" / "sweep.csv")
    assert {row["status"] for row in rows} == {"FINISHED", "PRUNED"}
    _, children = trials_of(searched.client(), searched.params["tracking"]["experiment"])
    for run in children:
        events = list((searched.root / run.data.tags[tags.TENSORBOARD]).glob("events.out.tfevents.*"))
        assert events, run.info.run_name
        state = run.data.tags[tags.TRIAL_STATE].encode()
        assert any(b"trial_state" in path.read_bytes() and state in path.read_bytes() for path in events)


def test_dvc_sees_the_search_as_params_and_metrics(searched: Pipeline) -> None:
    shown = json.loads(run_command(["dvc", "metrics", "show", "--json"], searched.root, searched.env).stdout)
    assert "pruned_runs" in json.dumps(shown)
    diff = run_command(["dvc", "params", "diff", "--all", "--json"], searched.root, searched.env).stdout
    assert "sweep.search" in diff and "sweep.space.lr.low" in diff


def test_the_same_seed_draws_and_trains_the_same_trials(searched: Pipeline, sample_dataset: Path, tmp_path: Path):
    root = tmp_path / "again"
    root.mkdir()
    write_params(root / "params.yaml", direct_params(sample_dataset, root))
    for command in (["download"], ["sweep"]):
        done = subprocess.run(
            ["fashion-mlops", *command],
            cwd=root,
            env=cli_env(),
            capture_output=True,
            text=True,
            timeout=SWEEP_TIMEOUT_S,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert csv_rows(root / "reports" / "sweep.csv") == csv_rows(searched.root / "reports" / "sweep.csv")


def test_a_search_starts_no_trial_once_its_time_budget_is_spent(sample_dataset: Path, tmp_path: Path) -> None:
    params = direct_params(sample_dataset, tmp_path)
    params["sweep"]["time_budget_s"] = 0.5  # spent while the first trial trains
    write_params(tmp_path / "params.yaml", params)
    for command in (["download"], ["sweep"]):
        done = subprocess.run(
            ["fashion-mlops", *command], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "reports" / "sweep.json").read_text())
    assert summary["total_runs"] == summary["finished_runs"] == 1
    assert summary["runs"][summary["best_run"]]["epochs"] == EPOCHS  # the trial under way finished


def test_an_interrupted_search_resumes_its_study(sample_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "resumed"
    root.mkdir()
    params = direct_params(sample_dataset, root)
    write_params(root / "params.yaml", params)
    subprocess.run(["fashion-mlops", "download"], cwd=root, env=cli_env(), check=True, capture_output=True)
    client = MlflowClient(tracking_uri=params["tracking"]["mlflow_uri"])
    sweep = start_sweep(root)
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    settled: list[Any] = []
    while len(settled) < 2:  # two trials settled, the third under way
        assert sweep.poll() is None, sweep.stdout.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
        experiment = client.get_experiment_by_name(params["tracking"]["experiment"])
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        settled = [run for run in runs if run.data.tags.get(tags.TRIAL_STATE)]
    os.killpg(sweep.pid, signal.SIGINT)
    assert sweep.wait(timeout=120) == 130
    first_parent, first = trials_of(client, params["tracking"]["experiment"])
    assert first_parent.info.status == "KILLED"
    done_first = {run.info.run_id: run for run in first if run.data.tags.get(tags.TRIAL_STATE)}
    cut = [run for run in first if not run.data.tags.get(tags.TRIAL_STATE)]
    assert len(done_first) >= 2 and all(run.info.status == "KILLED" for run in cut)

    again = subprocess.run(
        ["fashion-mlops", "sweep"], cwd=root, env=cli_env(), capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert (root / "optuna.db").is_file()  # beside mlflow.db
    parent, second = trials_of(client, params["tracking"]["experiment"])
    assert parent.info.status == "FINISHED" and parent.info.run_id != first_parent.info.run_id
    states = [run.data.tags.get(tags.TRIAL_STATE) for run in second]
    assert len(second) == TRIALS and None not in states
    copied = {run.data.tags.get(tags.REUSED_FROM) for run in second} - {None}
    assert copied == set(done_first), "each trial settled before Ctrl-C is copied, none trained again"
    redone = {(run.data.params["lr"], run.data.params["batch_size"]) for run in second}
    for run in cut:  # the interrupted trial's settings were queued and trained first
        assert (run.data.params["lr"], run.data.params["batch_size"]) in redone
    everything = client.search_runs([first_parent.info.experiment_id])
    assert not [run.info.run_name for run in everything if run.info.status == "RUNNING"]
