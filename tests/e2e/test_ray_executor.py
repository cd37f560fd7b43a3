"""`sweep.executor: ray` against a real Ray head on 127.0.0.1 (started here, stopped by PID): the same runs, metrics,
models, events and reports as the local executor; a dead worker fails only its cell; SIGTERM ends every run KILLED."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from mlflow import MlflowClient

from fashion_mlops.tracking import tags
from helpers import VENV_BIN, cli_env, free_port, start_sweep, stop_group, tiny_params, write_params

pytestmark = pytest.mark.slow

HEAD_START_TIMEOUT_S = 180
SWEEP_TIMEOUT_S = 600
TWO_CELLS = {"lr": [0.01, 0.003]}


@dataclass(frozen=True)
class Sweep:
    root: Path
    params: dict[str, Any]
    result: subprocess.CompletedProcess[str]

    @property
    def uri(self) -> str:
        return self.params["tracking"]["mlflow_uri"]

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri)

    def report(self, name: str) -> Any:
        return json.loads((self.root / "reports" / name).read_text())

    def runs(self) -> list[Any]:
        client = self.client()
        experiment = client.get_experiment_by_name(self.params["tracking"]["experiment"])
        return client.search_runs([experiment.experiment_id])


def prepare(root: Path, dataset: Path, **overrides: Any) -> dict[str, Any]:
    root.mkdir(parents=True, exist_ok=True)
    params = tiny_params(dataset, root, **{"sweep.grid": TWO_CELLS, **overrides})
    write_params(root / "params.yaml", params)
    subprocess.run(["fashion-mlops", "download"], cwd=root, env=cli_env(), check=True, capture_output=True)
    return params


def run_sweep(root: Path, dataset: Path, **overrides: Any) -> Sweep:
    params = prepare(root, dataset, **overrides)
    result = subprocess.run(
        ["fashion-mlops", "sweep"], cwd=root, env=cli_env(), capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return Sweep(root, params, result)


def session_processes(marker: str) -> list[psutil.Process]:
    """Live processes whose command line names `marker` (a Ray head's temp dir)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if marker in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


@pytest.fixture(scope="module")
def ray_head() -> Iterator[str]:
    """`ray start --head` on 127.0.0.1 with 2 CPUs; every process of it is stopped by PID afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    log = Path(temp_dir) / "head.log"
    command = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=2",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--temp-dir={temp_dir}",
    ]
    with log.open("w") as out:
        head = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=cli_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        leftovers = session_processes(temp_dir)
        stop_group(head)
        for process in [*leftovers, *session_processes(temp_dir)]:
            if process.is_running():
                process.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def local_sweep(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    return run_sweep(tmp_path_factory.mktemp("local") / "work", sample_dataset)


@pytest.fixture(scope="module")
def ray_sweep(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory, ray_head: str) -> Sweep:
    root = tmp_path_factory.mktemp("ray") / "work"
    return run_sweep(root, sample_dataset, **{"sweep.executor": "ray", "sweep.ray_address": ray_head})


def by_name(runs: list[Any]) -> dict[str, Any]:
    return {run.info.run_name: run for run in runs}


def children(sweep: Sweep) -> dict[str, Any]:
    return by_name([run for run in sweep.runs() if run.data.tags.get(tags.KIND) == "cell"])


def test_the_ray_sweep_is_one_finished_parent_with_one_finished_child_per_cell(ray_sweep: Sweep) -> None:
    runs = ray_sweep.runs()
    parents = [run for run in runs if run.data.tags.get(tags.KIND) == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    cells = children(ray_sweep)
    assert sorted(cells) == ["run-00-lr=0.01", "run-01-lr=0.003"]
    for run in cells.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags[tags.PARENT] == parents[0].info.run_id
        assert run.data.tags[tags.SWEEP] == parents[0].info.run_id


def test_every_metric_of_every_epoch_equals_the_local_executors(ray_sweep: Sweep, local_sweep: Sweep) -> None:
    ray_cells, local_cells = children(ray_sweep), children(local_sweep)
    assert sorted(ray_cells) == sorted(local_cells)
    for name, run in ray_cells.items():
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "lr"):
            ray_history = [(m.step, m.value) for m in ray_sweep.client().get_metric_history(run.info.run_id, key)]
            local_run = local_cells[name].info.run_id
            local_history = [(m.step, m.value) for m in local_sweep.client().get_metric_history(local_run, key)]
            assert sorted(ray_history) == sorted(local_history), (name, key)
        assert run.data.tags[tags.FINGERPRINT] == local_cells[name].data.tags[tags.FINGERPRINT]


def test_the_best_run_and_the_reports_match_the_local_executors(ray_sweep: Sweep, local_sweep: Sweep) -> None:
    ray_best, local_best = ray_sweep.report("best_run.json"), local_sweep.report("best_run.json")
    assert ray_best["run_name"] == local_best["run_name"]
    assert ray_best["val_accuracy"] == local_best["val_accuracy"]
    ray_rows = [
        {k: v for k, v in row.items() if k not in ("run_id", "epoch_duration_s", "run_duration_s")}
        for row in ray_sweep.report("sweep.json")["rows"]
    ]
    local_rows = [
        {k: v for k, v in row.items() if k not in ("run_id", "epoch_duration_s", "run_duration_s")}
        for row in local_sweep.report("sweep.json")["rows"]
    ]
    assert ray_rows == local_rows


def test_every_cell_logs_its_model_and_its_tensorboard_events(ray_sweep: Sweep) -> None:
    for run in children(ray_sweep).values():
        model_uri = run.data.tags[tags.MODEL_URI]
        assert model_uri.startswith("models:/")
        logged = ray_sweep.client().get_logged_model(model_uri.removeprefix("models:/"))
        assert logged.source_run_id == run.info.run_id
        events = list(Path(run.data.tags[tags.TENSORBOARD]).glob("events.out.tfevents.*"))
        assert len(events) == 1 and events[0].stat().st_size > 0


# --- a sampled search through Ray Tune on the same head ----------------------------------------------------------

SEARCH = {
    "sweep.grid": {},
    "sweep.search": "tpe",
    "sweep.trials": 6,
    "sweep.seed": 3,
    "sweep.space": {"lr": {"low": 1e-4, "high": 0.3, "log": True}, "batch_size": [16, 64]},
    "sweep.prune": "median",
    "sweep.prune_warmup": 1,
    "train.epochs": 4,
}


@pytest.fixture(scope="module")
def ray_search(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory, ray_head: str) -> Sweep:
    root = tmp_path_factory.mktemp("ray-search") / "work"
    searched = run_sweep(root, sample_dataset, **SEARCH, **{"sweep.executor": "ray", "sweep.ray_address": ray_head})
    evaluated = subprocess.run(
        ["fashion-mlops", "evaluate"], cwd=root, env=cli_env(), capture_output=True, text=True, timeout=SWEEP_TIMEOUT_S
    )
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    return searched


def test_a_tpe_search_with_median_pruning_runs_as_ray_tune_trials(ray_search: Sweep) -> None:
    runs = ray_search.runs()
    (parent,) = [run for run in runs if run.data.tags.get(tags.KIND) == "sweep"]
    assert parent.info.status == "FINISHED"
    trials = [run for run in runs if run.data.tags.get(tags.SWEEP) == parent.info.run_id]
    assert sorted(int(run.data.tags[tags.TRIAL]) for run in trials) == list(range(6))
    assert not [run for run in runs if run.info.status == "RUNNING"]
    pruned = [run for run in trials if run.data.tags.get(tags.TRIAL_STATE) == "pruned"]
    finished = [run for run in trials if run.data.tags.get(tags.TRIAL_STATE) == "finished"]
    assert pruned and finished and len(pruned) + len(finished) == 6
    client = ray_search.client()
    for run in pruned:
        assert run.info.status == "KILLED"
        reached = len(client.get_metric_history(run.info.run_id, "val_accuracy"))
        assert run.data.tags[tags.FAILURE].startswith(f"pruned after epoch {reached} of 4 by the median rule")
    for run in finished:
        assert run.info.status == "FINISHED"
        assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 4
        assert run.data.tags[tags.MODEL_URI].startswith("models:/")  # logged by the trial's worker
    summary = ray_search.report("sweep.json")
    assert summary["pruned_runs"] == len(pruned) and summary["finished_runs"] == len(finished)


def test_the_ray_searchs_best_finished_trial_is_promoted(ray_search: Sweep) -> None:
    best = ray_search.report("best_run.json")
    runs = {run.info.run_id: run for run in ray_search.runs()}
    assert runs[best["run_id"]].data.tags[tags.TRIAL_STATE] == "finished"
    registry = ray_search.params["registry"]
    version = ray_search.client().get_model_version_by_alias(registry["model_name"], registry["alias"])
    assert version.run_id == best["run_id"]


def test_validate_refuses_a_relative_sqlite_store_for_a_cluster_in_one_line(
    sample_dataset: Path, tmp_path: Path
) -> None:
    params = tiny_params(sample_dataset, tmp_path, **{"sweep.executor": "ray", "sweep.ray_address": "auto"})
    params["tracking"]["mlflow_uri"] = "sqlite:///mlflow.db"
    write_params(tmp_path / "params.yaml", params)
    for command in ("validate", "sweep"):
        result = subprocess.run(["fashion-mlops", command], cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "tracking.mlflow_uri" in lines[0] and "sweep.ray_address" in lines[0], lines
    assert not (tmp_path / "mlflow.db").exists()


def wait_for_running_cells(
    sweep_root: Path, uri: str, count: int, process: subprocess.Popen[str], name_part: str = ""
) -> list[Any]:
    """`count` RUNNING child runs (named with `name_part`) with at least one epoch logged."""
    client = MlflowClient(tracking_uri=uri)
    deadline = time.monotonic() + SWEEP_TIMEOUT_S
    while time.monotonic() < deadline and process.poll() is None:
        experiment = client.get_experiment_by_name("test") if (sweep_root / "mlflow.db").exists() else None
        if experiment is not None:
            running = [
                run
                for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
                if run.data.tags.get(tags.KIND) == "cell"
                and "val_accuracy" in run.data.metrics
                and name_part in run.info.run_name
            ]
            if len(running) >= count:
                return running
        time.sleep(0.5)
    output = process.stdout.read() if process.poll() is not None else ""
    pytest.fail(f"no {count} running cell(s) appeared\n{output}")


def test_a_dead_worker_fails_its_cell_and_the_sweep_goes_on(
    sample_dataset: Path, tmp_path: Path, ray_head: str
) -> None:
    overrides = {"sweep.executor": "ray", "sweep.ray_address": ray_head, "train.threads": 1}
    params = prepare(tmp_path, sample_dataset, **overrides)
    params["sweep"]["grid"] = {"epochs": [400, 3]}  # the long cell is killed; the short one finishes
    write_params(tmp_path / "params.yaml", params)
    sweep = start_sweep(tmp_path)
    try:
        uri = params["tracking"]["mlflow_uri"]
        (long_cell,) = wait_for_running_cells(tmp_path, uri, 1, sweep, name_part="epochs=400")
        os.kill(int(long_cell.data.tags[tags.PID]), signal.SIGKILL)
        output, _ = sweep.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        stop_group(sweep)
    assert sweep.returncode == 0, output
    done = Sweep(tmp_path, params, subprocess.CompletedProcess([], 0))
    cells = children(done)
    killed = cells[long_cell.info.run_name]
    assert killed.info.status == "FAILED"
    assert "Ray worker died" in killed.data.tags[tags.FAILURE]
    survivor = cells["run-01-epochs=3"]
    assert survivor.info.status == "FINISHED"
    assert done.report("best_run.json")["run_name"] == "run-01-epochs=3"
    assert done.report("sweep.json")["runs"][long_cell.info.run_name]["status"] == "FAILED"


def test_sigterm_cancels_the_tasks_and_every_run_ends_killed(sample_dataset: Path, tmp_path: Path) -> None:
    """On a Ray instance the sweep starts itself (sweep.ray_address: null), which stops with the sweep."""
    raylets_before = {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet"}
    params = prepare(tmp_path, sample_dataset, **{"sweep.executor": "ray", "train.threads": 1, "train.epochs": 400})
    sweep = start_sweep(tmp_path)
    try:
        wait_for_running_cells(tmp_path, params["tracking"]["mlflow_uri"], 2, sweep)
        sweep.send_signal(signal.SIGTERM)
        output, _ = sweep.communicate(timeout=120)
    finally:
        stop_group(sweep)
    assert sweep.returncode == 130, output
    runs = Sweep(tmp_path, params, subprocess.CompletedProcess([], 0)).runs()
    assert len(runs) == 3
    assert {run.info.status for run in runs} == {"KILLED"}
    time.sleep(2)
    raylets_after = {p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "raylet"}
    assert not raylets_after - raylets_before, "the Ray instance started for the sweep is still running"
