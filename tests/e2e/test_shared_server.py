"""End to end: the README's multi-machine store, for real. A PostgreSQL cluster, one `mlflow server` on it that
proxies artifacts into a shared folder, and the real CLI (`sweep`, `evaluate`, `export`) pointed at the server by
MLFLOW_TRACKING_URI alone, on a 2-cell sweep of the sample dataset.

Evaluation is a race: host A evaluates the sweep's best model while host B, at the same moment, evaluates the other
cell's model. Each has its own temp dir, so its own registry lock file, as on two machines: only the promotion's
re-reads of the alias keep the worse model from ending up with it. Then host A exports its champion.

The tests read what that left: the runs in PostgreSQL itself (read with psql, as an admin would), the model files
under the artifacts destination, the registry, also as another process sees it.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from fashion_mlops.data.download import download_dataset
from fashion_mlops.data.manifest import load_manifest
from fashion_mlops.tracking import tags
from helpers import VENV_BIN, tiny_params, write_params
from services import MlflowServer, Postgres, running_mlflow_server, running_postgres

pytestmark = pytest.mark.slow

TIMEOUT_S = 600
GRID = {"lr": [0.01, 0.0003]}  # the second cell learns little, so the racing models' test accuracies differ


@dataclass(frozen=True)
class Shared:
    """The shared store (PostgreSQL, the MLflow server on it) and the two hosts that used it."""

    postgres: Postgres
    server: MlflowServer
    root: Path  # host A: sweep, evaluate, export
    rival: Path  # host B: evaluate only, of the other cell's model
    params: dict[str, Any]

    @property
    def model_name(self) -> str:
        return self.params["registry"]["model_name"]

    @property
    def alias(self) -> str:
        return self.params["registry"]["alias"]

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.server.url, registry_uri=self.server.url)

    def sql(self, query: str) -> list[list[str]]:
        """Rows of `query` in the MLflow database, read by psql (no MLflow code in between)."""
        output = self.postgres.psql(query, database="mlflow")
        return [line.split("|") for line in output.splitlines() if line]

    def report(self, name: str, host: Path | None = None) -> Any:
        return json.loads(((host or self.root) / "reports" / name).read_text())


def machine_env(server: MlflowServer, host: Path) -> dict[str, str]:
    """A machine's environment: the venv on PATH, the tracking server named by MLFLOW_TRACKING_URI alone, and a temp
    dir of its own (where the registry lock of an http store lives: one per machine)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_REGISTRY_URI"}
    (host / "tmp").mkdir(exist_ok=True)
    return env | {
        "PATH": f"{VENV_BIN}{os.pathsep}{env['PATH']}",
        "MLFLOW_TRACKING_URI": server.url,
        "TMPDIR": str(host / "tmp"),
    }


def fashion_mlops(host: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(VENV_BIN / "fashion-mlops"), *args],
        cwd=host,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(*processes: subprocess.Popen[str]) -> None:
    for process in processes:
        _, stderr = process.communicate(timeout=TIMEOUT_S)
        assert process.returncode == 0, f"{process.args} exited {process.returncode}:\n{stderr[-4000:]}"


def other_cell_best_run(client: MlflowClient, best: dict[str, Any]) -> dict[str, Any]:
    """The best_run.json a sweep would have written had the other cell won (what host B evaluates)."""
    sweep = client.get_run(best["sweep_run_id"])
    runs = client.search_runs([sweep.info.experiment_id], f"tags.`{tags.PARENT}` = '{sweep.info.run_id}'")
    (other,) = [r for r in runs if r.info.run_id != best["run_id"]]
    return {
        "run_name": other.info.run_name,
        "run_id": other.info.run_id,
        "model_uri": other.data.tags[tags.MODEL_URI],
        "val_accuracy": other.data.metrics["val_accuracy"],
    }


@pytest.fixture(scope="module")
def shared(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shared]:
    root = tmp_path_factory.mktemp("shared-server")
    host_a, host_b = root / "host-a", root / "host-b"
    params = tiny_params(sample_dataset, host_a, **{"sweep.grid": GRID})
    for host in (host_a, host_b):
        (host / "reports").mkdir(parents=True)
        write_params(host / "params.yaml", params)  # host B reads host A's data folder: one download is enough
    download_dataset(load_manifest(sample_dataset / "manifest.json"), [str(sample_dataset)], host_a / "data" / "raw")
    with running_postgres() as postgres:
        uri = postgres.create_database("mlflow", "mlflow", secrets.token_hex(16))
        with running_mlflow_server(uri, root / "artifacts", root / "mlflow-server.log") as server:
            a, b = machine_env(server, host_a), machine_env(server, host_b)
            finish(fashion_mlops(host_a, a, "sweep"))
            work = Shared(postgres, server, host_a, host_b, params)
            best = other_cell_best_run(work.client(), work.report("best_run.json"))
            (host_b / "reports" / "best_run.json").write_text(json.dumps(best))
            finish(fashion_mlops(host_a, a, "evaluate"), fashion_mlops(host_b, b, "evaluate"))
            finish(fashion_mlops(host_a, a, "export"))
            yield work


def sweep_runs(shared: Shared) -> tuple[Any, list[Any]]:
    client = shared.client()
    experiment = client.get_experiment_by_name(shared.params["tracking"]["experiment"])
    runs = client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)
    (parent,) = [r for r in runs if r.data.tags.get(tags.KIND) == "sweep"]
    children = [r for r in runs if r.data.tags.get(tags.PARENT) == parent.info.run_id]
    return parent, children


# --- the pipeline against the server ------------------------------------------------------------------------------


def test_every_run_is_in_postgresql_and_finished_and_nothing_went_to_a_local_store(shared: Shared) -> None:
    rows = shared.sql(
        "SELECT r.run_uuid, r.status, k.value, p.value FROM runs r "  # noqa: S608 (the project's own tag names)
        f"JOIN tags k ON k.run_uuid = r.run_uuid AND k.key = '{tags.KIND}' "
        f"LEFT JOIN tags p ON p.run_uuid = r.run_uuid AND p.key = '{tags.PARENT}'"
    )
    parents = [row for row in rows if row[2] == "sweep"]
    children = [row for row in rows if row[2] == "cell"]
    assert len(parents) == 1 and len(children) == len(GRID["lr"]), rows
    assert {row[1] for row in rows} == {"FINISHED"}, rows
    assert {row[3] for row in children} == {parents[0][0]}  # each cell's parent is the sweep
    best = shared.report("best_run.json")
    assert best["run_id"] in {row[0] for row in children}
    assert not (shared.root / "mlflow.db").exists() and not (shared.root / "mlruns").exists()


def test_the_logged_models_files_are_under_the_servers_artifacts_destination(shared: Shared) -> None:
    client = shared.client()
    _, children = sweep_runs(shared)
    for run in children:
        model_id = run.data.tags[tags.MODEL_URI].removeprefix("models:/")
        location = client.get_logged_model(model_id).artifact_location
        assert location.startswith("mlflow-artifacts:/"), location  # proxied by the server, not written by clients
        folder = shared.server.artifacts / location.removeprefix("mlflow-artifacts:/")
        assert (folder / "MLmodel").is_file() and (folder / "data" / "model.pt2").is_file(), sorted(folder.rglob("*"))
    best = shared.report("best_run.json")
    run_folder = shared.server.artifacts / client.get_run(best["run_id"]).info.artifact_uri.split(":/", 1)[1]
    assert (run_folder / "evaluation" / "evaluation.json").is_file()  # evaluate's reports
    assert (run_folder / "openvino" / "champion.xml").is_file()  # export's IR


def test_the_sweeps_best_model_is_registered_and_holds_the_alias_in_the_database(shared: Shared) -> None:
    evaluation = shared.report("evaluation.json")
    holder = shared.client().get_model_version_by_alias(shared.model_name, shared.alias)
    assert evaluation["promoted"] is True
    assert evaluation["model_version"] == evaluation["champion_version"] == int(holder.version)
    assert holder.run_id == shared.report("best_run.json")["run_id"]
    alias = shared.alias
    rows = shared.sql(f"SELECT name, version FROM registered_model_aliases WHERE alias = '{alias}' ORDER BY name")  # noqa: S608
    twin = shared.report("export.json")["onnx"]["model_version"]
    assert rows == [[shared.model_name, holder.version], [f"{shared.model_name}-onnx", str(twin)]]


def test_the_onnx_twin_is_registered_with_the_alias_and_names_its_source(shared: Shared) -> None:
    client = shared.client()
    source = client.get_model_version_by_alias(shared.model_name, shared.alias)
    twin = client.get_model_version_by_alias(f"{shared.model_name}-onnx", shared.alias)
    export = shared.report("export.json")
    assert export["onnx"]["has_alias"] is True and export["onnx"]["model_version"] == int(twin.version)
    assert twin.tags[tags.SOURCE_VERSION] == str(source.version)
    assert source.tags[tags.ONNX_VERSION] == str(twin.version)


SEEN_FROM_ELSEWHERE = """
import json, sys
from mlflow import MlflowClient
from mlflow.entities import ViewType
name, alias, experiment = sys.argv[1:]
client = MlflowClient()  # MLFLOW_TRACKING_URI alone, as on any other machine
runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id], run_view_type=ViewType.ALL)
print(json.dumps({
    "runs": sorted([r.info.run_id, r.info.status] for r in runs),
    "holders": [client.get_model_version_by_alias(n, alias).version for n in (name, name + "-onnx")],
}))
"""


def test_another_process_sees_the_same_runs_and_alias_holders(shared: Shared) -> None:
    result = subprocess.run(
        [sys.executable, "-c", SEEN_FROM_ELSEWHERE, shared.model_name, shared.alias, "test"],
        env=machine_env(shared.server, shared.rival),
        cwd=shared.rival,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout)
    parent, children = sweep_runs(shared)
    client = shared.client()
    assert seen["runs"] == sorted([r.info.run_id, r.info.status] for r in [parent, *children])
    assert seen["holders"] == [
        client.get_model_version_by_alias(name, shared.alias).version
        for name in (shared.model_name, f"{shared.model_name}-onnx")
    ]


# --- two hosts promoting at once ----------------------------------------------------------------------------------


def test_two_hosts_evaluating_at_once_without_a_shared_lock_leave_the_better_model_holding_the_alias(
    shared: Shared,
) -> None:
    ours, theirs = shared.report("evaluation.json"), shared.report("evaluation.json", shared.rival)
    client = shared.client()
    registered = client.search_model_versions(f"name = '{shared.model_name}'")
    assert sorted(int(v.version) for v in registered) == [1, 2]  # both registered, none lost or duplicated
    assert {ours["model_version"], theirs["model_version"]} == {1, 2}
    assert ours["test_accuracy"] > theirs["test_accuracy"], "the contenders tie, so the race proves nothing"
    holder = client.get_model_version_by_alias(shared.model_name, shared.alias)
    assert int(holder.version) == ours["model_version"]
    # host B may report a promotion that host A undid right after (the window registry.promote_if_better names);
    # what B read last is either itself or A, never anything else
    assert theirs["champion_version"] in (ours["model_version"], theirs["model_version"])
