"""End to end: the real `dvc repro` (download -> train_sweep -> evaluate) on a tiny dataset in a fresh git repo.

One module-scoped fixture copies the project into a temporary git + DVC repository, points params.yaml at
the conftest sample dataset with a 2 x 2 grid and two epochs (tracking paths relative to the repo, as in the
real params.yaml), and runs `dvc repro` once in a subprocess. Every test then reads what that one run left
behind: the MLflow store and registry, the TensorBoard event files, the reports and DVC's own view of them.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing import event_accumulator

from fashion_mlops.tracking import tags
from helpers import REPO_ROOT, VENV_BIN, tiny_params, write_params

pytestmark = pytest.mark.slow

GRID = {"lr": [0.01, 0.003], "batch_size": [32, 64]}
EPOCHS = 2
N_RUNS = len(list(itertools.product(*GRID.values())))
EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
STAGES = ("download", "train_sweep", "evaluate", "export")
ALWAYS_RUNS = "check_store"  # cheap, and the one way DVC learns that the MLflow store lost what reports/ names
# What `dvc repro` needs from the project; generated state (.venv, mlflow.db, mlruns, runs, data, reports) stays out.
PROJECT_FILES = ("dvc.yaml", "pyproject.toml", ".dvcignore", ".gitignore")
PROJECT_DIRS = ("datasets", "src")
COMMAND_TIMEOUT_S = 900


@dataclass(frozen=True)
class Pipeline:
    """The repository one `dvc repro` ran in, and what that run printed."""

    root: Path
    env: dict[str, str]
    params: dict[str, Any]
    repro: subprocess.CompletedProcess[str]

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_command(list(args), self.root, self.env, check=check)

    def report(self, name: str) -> Any:
        return json.loads((self.root / "reports" / name).read_text())


def run_command(
    args: list[str], cwd: Path, env: dict[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if check:
        assert result.returncode == 0, (
            f"`{' '.join(args)}` exited {result.returncode}\n--- stdout ---\n{result.stdout}\n"
            f"--- stderr ---\n{result.stderr}"
        )
    return result


def subprocess_env(root: Path) -> dict[str, str]:
    """The environment a user would have: the venv on PATH, no tracking-server override, a git identity."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    # Run the copied sources (the ones DVC hashes as stage deps), not whatever the editable install points at.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root / "src"), env.get("PYTHONPATH")]))
    env["DVC_NO_ANALYTICS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    for role in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{role}_NAME"] = "e2e test"
        env[f"GIT_{role}_EMAIL"] = "e2e@example.invalid"
    return env


def init_repo(root: Path, env: dict[str, str]) -> None:
    """A git repository and DVC in `root`, with the project's DVC config; nothing committed yet."""
    run_command(["git", "init", "-q", "-b", "main"], root, env)
    run_command(["dvc", "init", "-q"], root, env)
    shutil.copy2(REPO_ROOT / ".dvc" / "config", root / ".dvc" / "config")


def commit_all(root: Path, env: dict[str, str], message: str) -> None:
    run_command(["git", "add", "-A"], root, env)
    run_command(["git", "commit", "-q", "-m", message], root, env)


def copy_project(dest: Path) -> None:
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        shutil.copy2(REPO_ROOT / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    for name in PROJECT_DIRS:
        shutil.copytree(REPO_ROOT / name, dest / name, ignore=ignore)


def e2e_params(sample_dataset: Path, root: Path) -> dict[str, Any]:
    """tiny_params with the 2 x 2 grid and repo-relative paths, like the project's own params.yaml."""
    shutil.copy2(sample_dataset / "manifest.json", root / "datasets" / "sample.json")
    params = tiny_params(sample_dataset, root)
    params["data"] |= {"manifest": "datasets/sample.json", "sources": [str(sample_dataset)], "dir": "data/raw"}
    params["train"]["epochs"] = EPOCHS
    params["sweep"]["grid"] = {key: list(values) for key, values in GRID.items()}
    params["tracking"] |= {
        "mlflow_uri": "sqlite:///mlflow.db",
        "artifact_location": "mlruns",
        "tensorboard_dir": "runs",
        "histogram_every": EPOCHS + 3,  # longer than the runs: histograms come from their last epoch alone
    }
    return params


@pytest.fixture(scope="module")
def pipeline(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    root = tmp_path_factory.mktemp("e2e") / "repo"
    copy_project(root)
    params = e2e_params(sample_dataset, root)
    write_params(root / "params.yaml", params)
    env = subprocess_env(root)
    init_repo(root, env)
    commit_all(root, env, "e2e: project snapshot with tiny params")
    repro = run_command(["dvc", "repro"], root, env)
    return Pipeline(root=root, env=env, params=params, repro=repro)


@pytest.fixture(scope="module")
def sweep_runs(pipeline: Pipeline) -> tuple[Any, list[Any]]:
    """(the sweep's parent run, its child runs) as recorded right after the first `dvc repro`."""
    client = pipeline.client()
    runs = all_runs(client)
    parents = [r for r in runs if r.data.tags.get(tags.KIND) == "sweep"]
    assert len(parents) == 1, f"expected one sweep parent run, got {len(parents)}"
    parent = parents[0]
    children = [r for r in runs if r.data.tags.get(tags.PARENT) == parent.info.run_id]
    return parent, children


def all_runs(client: MlflowClient) -> list[Any]:
    """Every run in every experiment of the store (a misplaced run must still be found)."""
    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return client.search_runs(experiment_ids, run_view_type=ViewType.ALL, max_results=1000)


@pytest.fixture
def tracking_uri(pipeline: Pipeline) -> Iterator[str]:
    """Point the fluent MLflow API at the e2e store for one test, then restore the previous URIs."""
    previous_tracking, previous_registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(pipeline.tracking_uri)
    mlflow.set_registry_uri(pipeline.tracking_uri)
    try:
        yield pipeline.tracking_uri
    finally:
        mlflow.set_tracking_uri(previous_tracking)
        mlflow.set_registry_uri(previous_registry)


def head_commit(pipeline: Pipeline) -> str:
    return pipeline.run("git", "rev-parse", "HEAD").stdout.strip()


def find_key(tree: Any, key: str) -> list[Any]:
    """Every value stored under `key` anywhere in a nested JSON structure."""
    found = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == key:
                found.append(v)
            found.extend(find_key(v, key))
    elif isinstance(tree, list):
        for item in tree:
            found.extend(find_key(item, key))
    return found


# --- the first `dvc repro` --------------------------------------------------------------------------------------


def test_repro_runs_every_stage(pipeline: Pipeline) -> None:
    for stage in (*STAGES, ALWAYS_RUNS):
        assert f"Running stage '{stage}'" in pipeline.repro.stdout, pipeline.repro.stdout
    lock = yaml.safe_load((pipeline.root / "dvc.lock").read_text())
    assert set(lock["stages"]) == {*STAGES, ALWAYS_RUNS}
    assert len(list((pipeline.root / "data" / "raw").iterdir())) == 4


# --- MLflow runs ------------------------------------------------------------------------------------------------


def test_sweep_is_one_finished_parent_run_with_one_child_per_grid_cell(pipeline: Pipeline, sweep_runs) -> None:
    parent, children = sweep_runs
    assert parent.info.status == "FINISHED"
    assert len(children) == N_RUNS, f"expected {N_RUNS} child runs of the sweep, found {len(children)}"
    assert all(child.info.status == "FINISHED" for child in children)
    assert all(child.data.tags.get(tags.KIND) == "cell" for child in children)
    swept = sorted((float(c.data.params["lr"]), int(c.data.params["batch_size"])) for c in children)
    assert swept == sorted(itertools.product(GRID["lr"], GRID["batch_size"]))
    assert parent.data.tags.get("best_run_id") in {c.info.run_id for c in children}


def test_sweep_and_its_child_runs_are_in_the_configured_experiment(pipeline: Pipeline, sweep_runs) -> None:
    experiment = pipeline.client().get_experiment_by_name(pipeline.params["tracking"]["experiment"])
    assert experiment is not None, "the sweep did not create tracking.experiment"
    assert experiment.artifact_location == (pipeline.root / "mlruns").resolve().as_uri()
    parent, children = sweep_runs
    assert parent.info.experiment_id == experiment.experiment_id
    misplaced = {
        c.info.run_name: c.info.experiment_id for c in children if c.info.experiment_id != parent.info.experiment_id
    }
    assert not misplaced, f"child runs outside experiment {experiment.experiment_id} ({experiment.name}): {misplaced}"


def test_the_experiment_is_tagged_as_model_training(pipeline: Pipeline) -> None:
    experiment = pipeline.client().get_experiment_by_name(pipeline.params["tracking"]["experiment"])
    assert experiment.tags.get(tags.EXPERIMENT_KIND) == tags.MODEL_TRAINING


def test_every_child_run_has_per_epoch_metric_histories(pipeline: Pipeline, sweep_runs) -> None:
    client = pipeline.client()
    for child in sweep_runs[1]:
        for key in EPOCH_METRICS:
            history = client.get_metric_history(child.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), (child.info.run_name, key)
            assert all(np.isfinite(m.value) for m in history)


def test_every_child_run_logs_all_swept_and_fixed_params(pipeline: Pipeline, sweep_runs) -> None:
    fixed = {k: v for k, v in pipeline.params["train"].items() if k not in GRID}
    for child in sweep_runs[1]:
        logged = child.data.params
        for key in ("lr", "batch_size", "epochs", "seed", "optimizer", "shuffle", "momentum", "weight_decay"):
            assert key in logged, (child.info.run_name, key)
        assert logged["arch"] == pipeline.params["model"]["arch"]
        for key, value in fixed.items():
            assert logged[key] == str(value), (child.info.run_name, key)
        assert logged["val_size"] == str(pipeline.params["data"]["val_size"])


def test_every_run_is_tagged_with_git_commit_params_digest_and_tensorboard_dir(pipeline: Pipeline, sweep_runs) -> None:
    parent, children = sweep_runs
    commit = head_commit(pipeline)
    params_sha256 = hashlib.sha256((pipeline.root / "params.yaml").read_bytes()).hexdigest()
    for run in [parent, *children]:
        assert run.data.tags.get(tags.GIT_COMMIT) == commit, run.info.run_name
        assert run.data.tags.get(tags.PARAMS_SHA256) == params_sha256, run.info.run_name
    for child in children:
        assert child.data.tags.get(tags.TENSORBOARD), child.info.run_name


def test_every_child_run_records_its_training_dataset(pipeline: Pipeline, sweep_runs) -> None:
    for child in sweep_runs[1]:
        inputs = child.inputs.dataset_inputs
        assert inputs, f"{child.info.run_name} has no dataset input"
        assert all(i.dataset.digest for i in inputs)
        assert any(tag.key == "mlflow.data.context" and tag.value == "training" for i in inputs for tag in i.tags)


# --- models and the registry ------------------------------------------------------------------------------------


def test_every_child_run_logs_a_model(pipeline: Pipeline, sweep_runs) -> None:
    client = pipeline.client()
    for child in sweep_runs[1]:
        uri = child.data.tags.get(tags.MODEL_URI)
        assert uri and uri.startswith("models:/"), child.info.run_name
        model = client.get_logged_model(uri.removeprefix("models:/"))
        assert model.source_run_id == child.info.run_id


def test_best_model_is_registered_and_holds_the_alias(pipeline: Pipeline, sweep_runs) -> None:
    client = pipeline.client()
    registry = pipeline.params["registry"]
    evaluation = pipeline.report("evaluation.json")
    best = pipeline.report("best_run.json")
    version = client.get_model_version_by_alias(registry["model_name"], registry["alias"])
    assert version.name == registry["model_name"]
    assert int(version.version) == evaluation["model_version"]
    assert version.run_id == best["run_id"] == evaluation["run_id"]
    assert best["run_id"] in {c.info.run_id for c in sweep_runs[1]}


def test_alias_loads_as_pyfunc_and_predicts_ten_class_scores(pipeline: Pipeline, tracking_uri: str) -> None:
    registry = pipeline.params["registry"]
    model = mlflow.pyfunc.load_model(f"models:/{registry['model_name']}@{registry['alias']}")
    images = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    predictions = np.asarray(model.predict(images))
    assert predictions.shape == (3, 10)
    assert np.isfinite(predictions).all()


# --- TensorBoard ------------------------------------------------------------------------------------------------


def load_events(directory: Path) -> event_accumulator.EventAccumulator:
    guidance = dict.fromkeys(event_accumulator.DEFAULT_SIZE_GUIDANCE, 0)
    return event_accumulator.EventAccumulator(str(directory), size_guidance=guidance).Reload()


def test_every_child_run_writes_scalars_histograms_images_graph_and_hparams(pipeline: Pipeline, sweep_runs) -> None:
    directories = {(pipeline.root / c.data.tags[tags.TENSORBOARD]).resolve() for c in sweep_runs[1]}
    assert len(directories) == N_RUNS, "child runs share a TensorBoard directory"
    for directory in directories:
        assert directory.is_dir(), directory
        assert (pipeline.root / "runs") in directory.parents, f"{directory} is outside tracking.tensorboard_dir"
        events = load_events(directory)
        event_tags = events.Tags()
        for scalar in ("loss/train", "loss/val", "accuracy/train", "accuracy/val"):
            assert scalar in event_tags["scalars"], (directory, scalar)
            assert [e.step for e in events.Scalars(scalar)] == list(range(1, EPOCHS + 1)), (directory, scalar)
        assert any(t.startswith("weights/") for t in event_tags["histograms"]), directory
        assert any(t.startswith("gradients/") for t in event_tags["histograms"]), directory
        assert "samples/train" in event_tags["images"], directory
        assert event_tags["graph"], f"{directory} has no graph"
        assert events.PluginTagToContent("hparams"), f"{directory} has no HParams data"


# --- reports ----------------------------------------------------------------------------------------------------


def test_evaluation_report_has_test_metrics_per_class_scores_and_model_identity(pipeline: Pipeline) -> None:
    evaluation = pipeline.report("evaluation.json")
    assert 0.0 <= evaluation["test_accuracy"] <= 1.0
    assert np.isfinite(evaluation["test_loss"]) and evaluation["test_loss"] >= 0
    classes = json.loads((pipeline.root / "datasets" / "sample.json").read_text())["classes"]
    assert list(evaluation["per_class"]) == classes
    for name, scores in evaluation["per_class"].items():
        for key in ("precision", "recall", "f1"):
            assert 0.0 <= scores[key] <= 1.0, (name, key)
    assert evaluation["model_name"] == pipeline.params["registry"]["model_name"]
    assert isinstance(evaluation["model_version"], int)
    assert evaluation["run_id"]
    assert (pipeline.root / "reports" / "confusion_matrix.png").stat().st_size > 0


def test_sweep_csv_has_one_row_per_run_and_epoch(pipeline: Pipeline) -> None:
    with (pipeline.root / "reports" / "sweep.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == N_RUNS * EPOCHS
    for column in (
        "run",
        "epoch",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "epoch_duration_s",
        "run_duration_s",
        "lr",
        "batch_size",
    ):
        assert column in rows[0], column
    pairs = sorted((row["run"], int(row["epoch"])) for row in rows)
    assert len(set(pairs)) == len(pairs)
    assert len({run for run, _ in pairs}) == N_RUNS
    assert {epoch for _, epoch in pairs} == set(range(1, EPOCHS + 1))


def test_sweep_json_summarises_the_sweep(pipeline: Pipeline) -> None:
    sweep = pipeline.report("sweep.json")
    assert sweep["total_runs"] == sweep["finished_runs"] == N_RUNS
    assert sweep["best_run"] in sweep["runs"]
    assert len(sweep["rows"]) == N_RUNS * EPOCHS


# --- DVC's view of the result -----------------------------------------------------------------------------------


def test_dvc_metrics_show_lists_test_accuracy(pipeline: Pipeline) -> None:
    shown = json.loads(pipeline.run("dvc", "metrics", "show", "--json").stdout)
    evaluation = pipeline.report("evaluation.json")
    assert evaluation["test_accuracy"] in find_key(shown, "test_accuracy")


def test_dvc_params_diff_succeeds(pipeline: Pipeline) -> None:
    diff = json.loads(pipeline.run("dvc", "params", "diff", "--all", "--json").stdout or "{}")
    assert find_key(diff, "train.epochs"), diff


def test_dvc_plots_show_renders(pipeline: Pipeline, tmp_path: Path) -> None:
    rendered = json.loads(pipeline.run("dvc", "plots", "show", "--json").stdout)
    assert rendered
    pipeline.run("dvc", "plots", "show", "--out", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").is_file()


# --- a second `dvc repro` and a params change -------------------------------------------------------------------


def test_second_repro_does_nothing(pipeline: Pipeline) -> None:
    client = pipeline.client()
    before = {r.info.run_id for r in all_runs(client)}
    lock = (pipeline.root / "dvc.lock").read_bytes()
    again = pipeline.run("dvc", "repro")
    assert stages_run(again) == {ALWAYS_RUNS}, again.stdout
    for stage in STAGES:
        assert f"Stage '{stage}' didn't change, skipping" in again.stdout, again.stdout
    assert {r.info.run_id for r in all_runs(client)} == before, "the no-op repro created MLflow runs"
    assert (pipeline.root / "dvc.lock").read_bytes() == lock


def test_changing_train_epochs_invalidates_train_sweep_and_downstream_but_not_download(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(pipeline.root, copy, symlinks=True)
    env = subprocess_env(copy)
    assert json.loads(run_command(["dvc", "status", "--json"], copy, env).stdout) == {ALWAYS_RUNS: ["always changed"]}
    params = yaml.safe_load((copy / "params.yaml").read_text())
    params["train"]["epochs"] = EPOCHS + 1
    write_params(copy / "params.yaml", params)
    status = json.loads(run_command(["dvc", "status", "--json"], copy, env).stdout)
    assert "train_sweep" in status, status
    assert {"params.yaml": {"train": "modified"}} in [entry.get("changed deps") for entry in status["train_sweep"]]
    assert "download" not in status, status
    # `dvc status` reports a stage whose own deps changed; evaluate is stale through train_sweep's output,
    # which DVC only sees once train_sweep has rerun. The DAG is what guarantees `dvc repro` reruns it.
    dag = run_command(["dvc", "dag", "--dot"], copy, env).stdout
    assert '"train_sweep" -> "evaluate"' in dag, dag
    assert '"download" -> "train_sweep"' in dag, dag


# --- a fresh clone, and a store that lost its files -----------------------------------------------------------


@dataclass(frozen=True)
class Rebuilds:
    """A fresh `git clone` of a repository whose dvc.lock and reports/ were committed, run step by step."""

    clone: Pipeline
    first: subprocess.CompletedProcess[str]  # `dvc repro` in the new clone
    again: subprocess.CompletedProcess[str]  # a second `dvc repro`
    after_losing: dict[str, subprocess.CompletedProcess[str]]  # `dvc repro` after deleting each of these


def stages_run(repro: subprocess.CompletedProcess[str]) -> set[str]:
    return {stage for stage in (*STAGES, ALWAYS_RUNS) if f"Running stage '{stage}'" in repro.stdout}


# Read in a fresh process: this one's MLflow keeps its SQLite connections, which would still see a deleted mlflow.db.
STORE_FACTS = """
import json, sys
from pathlib import Path
import mlflow
reports = Path("reports")
best = json.loads((reports / "best_run.json").read_text())
evaluation = json.loads((reports / "evaluation.json").read_text())
client = mlflow.MlflowClient("sqlite:///mlflow.db")
model = client.get_logged_model(best["model_uri"].removeprefix("models:/"))
runs = json.loads((reports / "sweep.json").read_text())["runs"].values()
holder = client.get_model_version_by_alias(evaluation["model_name"], evaluation["alias"])
print(json.dumps({
    "best_run_status": client.get_run(best["run_id"]).info.status,
    "best_model_files": (Path(model.artifact_location.removeprefix("file://")) / "MLmodel").is_file(),
    "event_files": [
        len(list(Path(client.get_run(r["run_id"]).data.tags["tensorboard.dir"]).glob("events.out.tfevents.*")))
        for r in runs
    ],
    "holder": int(holder.version),
    "reported_holder": evaluation["champion_version"],
}))
"""


def assert_store_holds_what_reports_name(clone: Pipeline) -> None:
    """The best run, its model, every run's TensorBoard events and the alias holder are in the clone's store."""
    facts = json.loads(clone.run(str(VENV_BIN / "python"), "-c", STORE_FACTS).stdout)
    assert facts["best_run_status"] == "FINISHED", facts
    assert facts["best_model_files"], facts
    assert facts["event_files"] and all(facts["event_files"]), facts
    assert facts["holder"] == facts["reported_holder"], facts


@pytest.fixture(scope="module")
def rebuilds(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> Rebuilds:
    """Commit a finished pipeline (a one-cell grid, to keep it short), clone it the way a user does, and run
    `dvc repro` there: first as is, then again, then after deleting each part of the store in turn."""
    origin = tmp_path_factory.mktemp("origin") / "repo"
    ignore = shutil.ignore_patterns("mlflow.db*", "mlruns", "runs")  # its experiment points at the original's files
    shutil.copytree(pipeline.root, origin, symlinks=True, ignore=ignore)
    env = subprocess_env(origin)
    params = yaml.safe_load((origin / "params.yaml").read_text())
    params["sweep"]["grid"] = {"lr": [GRID["lr"][0]]}
    params["train"]["epochs"] = 1
    write_params(origin / "params.yaml", params)
    run_command(["dvc", "repro"], origin, env)
    run_command(["git", "add", "-A"], origin, env)
    run_command(["git", "commit", "-q", "-m", "pipeline results: dvc.lock and reports/"], origin, env)
    root = tmp_path_factory.mktemp("clone") / "repo"
    run_command(["git", "clone", "-q", str(origin), str(root)], origin.parent, env)
    clone = Pipeline(root=root, env=subprocess_env(root), params=params, repro=None)  # type: ignore[arg-type]
    first = clone.run("dvc", "repro")
    assert_store_holds_what_reports_name(clone)
    again = clone.run("dvc", "repro")
    after_losing = {}
    for lost in ("mlflow.db", "mlruns", "runs"):
        target = root / lost
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        after_losing[lost] = clone.run("dvc", "repro")
        assert_store_holds_what_reports_name(clone)
    return Rebuilds(clone, first, again, after_losing)


def test_a_fresh_clone_with_committed_reports_trains_evaluates_and_fills_the_store(rebuilds: Rebuilds) -> None:
    assert {ALWAYS_RUNS, *STAGES} <= stages_run(rebuilds.first), rebuilds.first.stdout
    assert "does not hold" in rebuilds.first.stdout, rebuilds.first.stdout


def test_a_second_repro_of_the_clone_only_checks_the_store(rebuilds: Rebuilds) -> None:
    assert stages_run(rebuilds.again) == {ALWAYS_RUNS}, rebuilds.again.stdout
    assert "holds every run" in rebuilds.again.stdout, rebuilds.again.stdout


@pytest.mark.parametrize("lost", ["mlflow.db", "mlruns", "runs"])
def test_deleting_part_of_the_store_makes_repro_rebuild_it(rebuilds: Rebuilds, lost: str) -> None:
    repro = rebuilds.after_losing[lost]
    assert {"train_sweep", "evaluate", "export"} <= stages_run(repro), repro.stdout
    assert "download" not in stages_run(repro), repro.stdout


def test_evaluate_given_a_run_the_store_does_not_hold_says_so_in_one_line(rebuilds: Rebuilds, tmp_path: Path) -> None:
    clone = rebuilds.clone
    best = clone.report("best_run.json") | {"run_id": "0" * 32}
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "best_run.json").write_text(json.dumps(best))
    result = run_command(["fashion-mlops", "--reports", str(reports), "evaluate"], clone.root, clone.env, check=False)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not in the store" in errors[0] and "dvc repro" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (reports / "evaluation.json").exists()


def test_dvc_metrics_diff_and_exp_run_work_in_the_clone(rebuilds: Rebuilds, tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(rebuilds.clone.root, copy, symlinks=True)
    env = subprocess_env(copy)
    diff = run_command(["dvc", "metrics", "diff", "--json"], copy, env)
    assert json.loads(diff.stdout) is not None
    run_command(["dvc", "exp", "run", "-S", "train.epochs=2"], copy, env)
    shown = json.loads(run_command(["dvc", "exp", "show", "--json"], copy, env).stdout)
    assert "train.epochs" in json.dumps(shown) or '"epochs": 2' in json.dumps(shown), shown
