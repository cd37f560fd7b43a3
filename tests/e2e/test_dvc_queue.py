"""End to end: DVC's experiment queue (`dvc exp run --queue`, `dvc queue start -j 2`) sharing one tracking store.

Queued experiments run in temporary copies of the repository (`.dvc/tmp/exps/tmpXXXXXXXX`) that DVC deletes when
they end. One module-scoped fixture builds a project repository with the default, relative tracking paths
(`sqlite:///mlflow.db`, `mlruns`, `runs`), downloads the data in the workspace, queues two experiments with
different learning rates (up to `evaluate`) and runs them at once. The tests then read what is left once the copies
are gone: the repository's own store, artifacts and TensorBoard logs, DVC's experiments, and the registry alias that
both evaluations competed for.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing import event_accumulator
from test_pipeline import commit_all, copy_project, e2e_params, init_repo, run_command, subprocess_env

from fashion_mlops.tracking import tags
from helpers import write_params

pytestmark = pytest.mark.slow

LEARNING_RATES = {"lr-high": 0.02, "lr-low": 0.005}
TARGET = "evaluate"  # up to the registry alias; export (ONNX, OpenVINO) runs the same hooks and is left out for time
QUEUE_TIMEOUT_S = 600
POLL_S = 10.0  # `dvc queue status` costs a CPU-second or two: polled often, it slows the queue it watches
DONE = ("Success", "Failed")
WORKERS = re.compile(r"^Worker status: (\d+) active, (\d+) idle", re.M)
STATUS_ROW = re.compile(r"^\w+\s+(?P<name>\S+)\s+.*?\s(?P<status>\w+)\s*$", re.M)  # task, name, created, status


@dataclass(frozen=True)
class Queued:
    """The repository two queued experiments ran from, and what DVC said of them."""

    root: Path
    env: dict[str, str]
    params: dict[str, Any]
    status: dict[str, str]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_command(list(args), self.root, self.env, check=check)

    def client(self) -> MlflowClient:
        uri = f"sqlite:///{self.root / 'mlflow.db'}"
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    def log(self, name: str) -> str:
        return self.run("dvc", "queue", "logs", name).stdout


def queue_status(root: Path, env: dict[str, str]) -> dict[str, str]:
    """Experiment name -> status (Queued, Running, Success, Failed), and "workers" -> how many run, from
    `dvc queue status`."""
    table = run_command(["dvc", "queue", "status"], root, env).stdout
    workers = WORKERS.search(table)
    running = sum(int(n) for n in workers.groups()) if workers else 0
    return {row["name"]: row["status"] for row in STATUS_ROW.finditer(table)} | {"workers": str(running)}


def start_queue(root: Path, env: dict[str, str], jobs: int) -> None:
    """`dvc queue start`, its output to a file: the workers it daemonizes would hold a pipe open until they exit."""
    with (root.parent / "queue-start.log").open("a") as log:
        subprocess.run(
            ["dvc", "queue", "start", "-j", str(jobs)], cwd=root, env=env, stdout=log, stderr=log, check=True
        )


def wait_for_queue(root: Path, env: dict[str, str], names: list[str]) -> dict[str, str]:
    """Wait until the named experiments are done and the workers have exited (an idle worker does within seconds:
    a later `dvc queue start` would leave it running, with the environment it was started with)."""
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    while True:
        status = queue_status(root, env)
        if all(status.get(name) in DONE for name in names) and status["workers"] == "0":
            return status
        if time.monotonic() > deadline:
            pytest.fail(f"the queue did not finish within {QUEUE_TIMEOUT_S} s: {status}")
        time.sleep(POLL_S)


def project_repo(sample_dataset: Path, root: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A committed project repository with tiny params (one grid cell, one epoch) and the data downloaded."""
    copy_project(root)
    params = e2e_params(sample_dataset, root)
    params["train"]["epochs"] = 1
    params["sweep"]["grid"] = {"arch": ["simple_cnn"]}  # lr stays free for `-S train.lr=...`
    params["tracking"]["histogram_every"] = 0
    write_params(root / "params.yaml", params)
    env = subprocess_env(root)
    init_repo(root, env)
    run_command(["dvc", "repro", "download"], root, env)  # into DVC's cache: the copies check it out from there
    commit_all(root, env, "e2e: project with tiny params and its data")
    return params, env


@pytest.fixture(scope="module")
def queued(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Queued]:
    root = tmp_path_factory.mktemp("queue") / "repo"
    params, env = project_repo(sample_dataset, root)
    for name, lr in LEARNING_RATES.items():
        run_command(["dvc", "exp", "run", "--queue", "-n", name, "-S", f"train.lr={lr}", TARGET], root, env)
    try:
        start_queue(root, env, jobs=2)
        status = wait_for_queue(root, env, list(LEARNING_RATES))
        yield Queued(root, env, params, status)
    finally:
        run_command(["dvc", "queue", "stop", "--kill"], root, env, check=False)


def all_runs(client: MlflowClient) -> list[Any]:
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(experiment_ids, run_view_type=ViewType.ALL, max_results=1000)


@pytest.fixture(scope="module")
def shown(queued: Queued) -> dict[str, dict[str, Any]]:
    """Experiment name -> its data in `dvc exp show --json` (params and metrics per file)."""
    found = {}
    for baseline in json.loads(queued.run("dvc", "exp", "show", "--json").stdout):
        for experiment in baseline.get("experiments") or []:
            for revision in experiment["revs"]:
                found[revision["name"]] = revision["data"]
    return found


# --- DVC's view ------------------------------------------------------------------------------------------------


def test_both_queued_experiments_succeed(queued: Queued) -> None:
    for name in LEARNING_RATES:
        assert queued.status[name] == "Success", queued.log(name)[-4000:]


def test_dvc_exp_show_lists_each_experiments_params_and_metrics(shown) -> None:
    for name, lr in LEARNING_RATES.items():
        data = shown[name]
        assert data["params"]["params.yaml"]["data"]["train"]["lr"] == lr
        metrics = data["metrics"]
        assert 0.0 <= metrics["reports/evaluation.json"]["data"]["test_accuracy"] <= 1.0
        assert metrics["reports/sweep.json"]["data"]["finished_runs"] == 1


def test_the_copies_check_the_data_out_of_dvcs_cache_and_are_deleted(queued: Queued) -> None:
    for name in LEARNING_RATES:
        log = queued.log(name)
        assert "Running stage 'download'" not in log, log[-4000:]
        assert "Running stage 'train_sweep'" in log
    assert not list((queued.root / ".dvc" / "tmp" / "exps").glob("tmp*"))


# --- the repository's tracking store, shared by both copies ---------------------------------------------------


@pytest.fixture(scope="module")
def sweeps(queued: Queued) -> dict[float, tuple[Any, list[Any]]]:
    """Learning rate -> (the sweep's parent run, its child runs), from the repository's own mlflow.db."""
    runs = all_runs(queued.client())
    found = {}
    for parent in (r for r in runs if r.data.tags.get(tags.KIND) == "sweep"):
        children = [r for r in runs if r.data.tags.get(tags.PARENT) == parent.info.run_id]
        lrs = {float(child.data.params["lr"]) for child in children}
        assert len(lrs) == 1, f"sweep {parent.info.run_id} mixes learning rates {lrs}"
        found[lrs.pop()] = (parent, children)
    return found


def test_the_repository_store_holds_both_sweeps_finished_with_models(queued: Queued, sweeps) -> None:
    assert sorted(sweeps) == sorted(LEARNING_RATES.values())
    client = queued.client()
    for parent, children in sweeps.values():
        assert parent.info.status == "FINISHED"
        assert len(children) == 1
        (child,) = children
        assert child.info.status == "FINISHED"
        model_uri = child.data.tags[tags.MODEL_URI]
        model = client.get_logged_model(model_uri.removeprefix("models:/"))
        assert model.source_run_id == child.info.run_id


def test_artifacts_are_in_the_repository_not_in_the_deleted_copies(queued: Queued) -> None:
    client = queued.client()
    experiment = client.get_experiment_by_name(queued.params["tracking"]["experiment"])
    assert experiment.artifact_location == (queued.root / "mlruns").as_uri()
    assert any((queued.root / "mlruns").rglob("MLmodel"))


def test_tensorboard_events_are_where_each_run_says_inside_the_repository(queued: Queued, sweeps) -> None:
    for _, children in sweeps.values():
        (child,) = children
        log_dir = Path(child.data.tags[tags.TENSORBOARD])
        assert log_dir.is_relative_to(queued.root / "runs"), log_dir
        events = event_accumulator.EventAccumulator(str(log_dir))
        events.Reload()
        assert "val_accuracy" in " ".join(events.Tags()["scalars"])


def test_the_alias_is_on_one_version_the_better_of_the_two_evaluations(queued: Queued, shown) -> None:
    registry = queued.params["registry"]
    client = queued.client()
    found = client.search_model_versions(f"name = '{registry['model_name']}'")
    versions = [client.get_model_version(v.name, v.version) for v in found]  # a search leaves aliases out
    holders = [v for v in versions if registry["alias"] in v.aliases]
    assert len(versions) == 2
    assert len(holders) == 1
    evaluations = [shown[name]["metrics"]["reports/evaluation.json"]["data"] for name in LEARNING_RATES]
    best = max(evaluation["test_accuracy"] for evaluation in evaluations)
    assert holders[0].run_id in {e["run_id"] for e in evaluations if e["test_accuracy"] == best}


# --- what a queue worker takes from the shell, and what is refused ---------------------------------------------


def test_a_queue_worker_takes_mlflow_tracking_uri_from_the_shell_that_starts_it(queued: Queued, tmp_path: Path) -> None:
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    queued.run("dvc", "exp", "run", "--queue", "-n", "store-check", "check_store")
    start_queue(queued.root, queued.env | {"MLFLOW_TRACKING_URI": shared}, jobs=1)
    status = wait_for_queue(queued.root, queued.env, ["store-check"])
    assert status["store-check"] == "Success", queued.log("store-check")[-4000:]
    ref = queued.run("git", "for-each-ref", "--format=%(refname)", "refs/exps").stdout.split()
    (experiment_ref,) = [r for r in ref if r.endswith("/store-check")]
    store = json.loads(queued.run("git", "show", f"{experiment_ref}:reports/store.json").stdout)
    assert store["tracking_uri"] == shared


def test_relative_tracking_paths_are_refused_in_a_copy_whose_origin_dvc_does_not_confirm(queued: Queued) -> None:
    """A copy below .dvc/tmp that DVC did not start (no DVC_ROOT): where the store belongs cannot be told."""
    copy = queued.root / ".dvc" / "tmp" / "exps" / "tmpbyhand"
    queued.run("git", "clone", "-q", str(queued.root), str(copy))
    env = {k: v for k, v in queued.env.items() if k != "DVC_ROOT"}
    before = sorted(p.name for p in copy.iterdir())
    for command in ("validate", "sweep"):
        result = run_command(["fashion-mlops", command], copy, env, check=False)
        assert result.returncode == 2, result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith("error: tracking.mlflow_uri = 'sqlite:///mlflow.db'")
        assert f"-S tracking.tensorboard_dir={queued.root / 'runs'}" in line
    assert sorted(p.name for p in copy.iterdir()) == before
