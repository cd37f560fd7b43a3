"""Where relative tracking paths point inside the temporary copies DVC runs queued experiments in, and what is refused
where the copy's origin cannot be told. Directories are real (laid out as DVC 3.67 lays them out); the environment is
passed in, as DVC passes it to a stage."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fashion_mlops.cli import main
from fashion_mlops.config import Params
from fashion_mlops.errors import ConfigError
from fashion_mlops.tracking import store
from fashion_mlops.tracking.workspace import anchored_params, anchored_uri, find_temp_copy

DEFAULT_TRACKING = {"mlflow_uri": "sqlite:///mlflow.db", "artifact_location": "mlruns", "tensorboard_dir": "runs"}


def repo_with_copy(tmp_path: Path, *under: str) -> tuple[Path, Path]:
    """(a repository, a copy of it where DVC puts queued experiments: .dvc/tmp/exps/[under/]tmpXXXXXXXX)."""
    repo = tmp_path / "repo"
    copy = repo.joinpath(".dvc", "tmp", "exps", *under, "tmpk3j9x0a1")
    (copy / ".dvc").mkdir(parents=True)
    return repo, copy


def params_with(tmp_path: Path, **tracking: object) -> Params:
    return Params.model_validate({"data": {"sources": [str(tmp_path)]}, "tracking": DEFAULT_TRACKING | tracking})


def test_a_queued_experiment_reads_relative_tracking_paths_against_its_repository(tmp_path: Path) -> None:
    repo, copy = repo_with_copy(tmp_path)
    params = params_with(tmp_path, mlflow_uri="sqlite:///stores/mlflow.db?timeout=30")

    tracking = anchored_params(params, cwd=copy, env={"DVC_ROOT": str(repo), "DVC_EXP_NAME": "lr-high"}).tracking

    assert tracking.mlflow_uri == f"sqlite:///{repo}/stores/mlflow.db?timeout=30"
    assert tracking.artifact_location == str(repo / "mlruns")
    assert tracking.tensorboard_dir == str(repo / "runs")


def test_a_temp_experiment_and_a_stage_in_a_subdirectory_read_them_the_same_way(tmp_path: Path) -> None:
    repo, copy = repo_with_copy(tmp_path, "standalone")  # dvc exp run --temp
    (copy / "stage").mkdir()

    tracking = anchored_params(params_with(tmp_path), cwd=copy / "stage", env={"DVC_ROOT": str(repo)}).tracking

    assert tracking.mlflow_uri == f"sqlite:///{repo}/stage/mlflow.db"
    assert tracking.tensorboard_dir == str(repo / "stage" / "runs")


def test_absolute_paths_and_server_uris_are_kept_in_a_copy(tmp_path: Path) -> None:
    repo, copy = repo_with_copy(tmp_path)
    params = params_with(tmp_path, mlflow_uri="http://127.0.0.1:5000", tensorboard_dir="/shared/runs")

    tracking = anchored_params(params, cwd=copy, env={"DVC_ROOT": str(repo)}).tracking

    assert (tracking.mlflow_uri, tracking.tensorboard_dir) == ("http://127.0.0.1:5000", "/shared/runs")
    assert anchored_uri("sqlite:////shared/mlflow.db", "tracking.mlflow_uri") == "sqlite:////shared/mlflow.db"


def test_the_workspace_and_dvcs_scratch_space_are_not_copies(tmp_path: Path) -> None:
    repo, _ = repo_with_copy(tmp_path)
    scratch = repo / ".dvc" / "tmp" / "exps" / "celery"  # the queue's own files: no .dvc/ of a repository
    scratch.mkdir()
    params = params_with(tmp_path)
    experiment = {"DVC_ROOT": str(repo), "DVC_EXP_NAME": "lr-high"}  # dvc exp run in the workspace

    for cwd in (repo, scratch):
        assert find_temp_copy(cwd, experiment) is None
        assert anchored_params(params, cwd=cwd, env=experiment) is params
    assert anchored_params(params, cwd=tmp_path, env={}) is params


@pytest.mark.parametrize(
    ("env", "why"),
    [({}, "DVC_ROOT is unset"), ({"DVC_ROOT": "/elsewhere"}, "DVC_ROOT is /elsewhere")],
    ids=["no-dvc-root", "other-dvc-root"],
)
def test_relative_paths_are_refused_where_dvc_does_not_confirm_the_copys_origin(
    tmp_path: Path, env: dict[str, str], why: str
) -> None:
    repo, copy = repo_with_copy(tmp_path)

    with pytest.raises(ConfigError) as refused:
        anchored_params(params_with(tmp_path), cwd=copy, env=env)

    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("tracking.mlflow_uri = 'sqlite:///mlflow.db' and tracking.artifact_location = 'mlruns'")
    assert why in message
    assert (
        f"dvc exp run --queue -S tracking.mlflow_uri=sqlite:///{repo}/mlflow.db "
        f"-S tracking.artifact_location={repo}/mlruns -S tracking.tensorboard_dir={repo}/runs"
    ) in message
    assert "MLFLOW_TRACKING_URI=http://host:5000 dvc queue start" in message


def test_an_experiment_outside_dvc_root_is_a_copy_of_unknown_origin(tmp_path: Path) -> None:
    repo, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    repo.mkdir()
    elsewhere.mkdir()
    params = params_with(tmp_path, mlflow_uri="http://127.0.0.1:5000")

    with pytest.raises(ConfigError, match=r"^tracking\.tensorboard_dir = 'runs' is relative.*outside DVC_ROOT"):
        anchored_params(params, cwd=elsewhere, env={"DVC_ROOT": str(repo), "DVC_EXP_NAME": "lr-high"})
    # a server keeps the artifacts, so only the TensorBoard directory is at stake; and a plain run is no copy
    assert anchored_params(params, cwd=elsewhere, env={"DVC_ROOT": str(repo)}) is params


def test_nothing_is_refused_when_tracking_is_off(tmp_path: Path) -> None:
    _, copy = repo_with_copy(tmp_path)
    params = params_with(tmp_path, enabled=False)

    assert anchored_params(params, cwd=copy, env={}) is params


def test_a_relative_mlflow_tracking_uri_from_the_shell_follows_the_same_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo, copy = repo_with_copy(tmp_path)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///shared.db")
    params = params_with(tmp_path, mlflow_uri="http://127.0.0.1:5000", tensorboard_dir="/r", artifact_location="/a")

    monkeypatch.setenv("DVC_ROOT", str(repo))
    assert store.tracking_uri(params) == f"sqlite:///{repo}/shared.db"

    monkeypatch.delenv("DVC_ROOT")
    with pytest.raises(ConfigError, match=r"^MLFLOW_TRACKING_URI = 'sqlite:///shared.db' is relative"):
        anchored_params(params)
    with pytest.raises(ConfigError, match=rf"MLFLOW_TRACKING_URI=sqlite:///{repo}/shared.db dvc queue start"):
        store.tracking_uri(params)


@pytest.fixture
def restore_sigterm():
    """cli.main installs a SIGTERM handler; give pytest its own back."""
    import signal

    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("command", ["validate", "check-store", "sweep", "evaluate", "export"])
def test_every_tracking_command_refuses_in_one_line_and_writes_nothing(
    tmp_path: Path, sample_dataset: Path, monkeypatch, capsys, restore_sigterm, command: str
) -> None:
    _, copy = repo_with_copy(tmp_path)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    # an earlier test's mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which would override these params
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (copy / "params.yaml").write_text(
        f"data: {{manifest: {sample_dataset / 'manifest.json'}, sources: [{sample_dataset}], val_size: 60}}\n"
    )
    before = sorted(p.name for p in tmp_path.rglob("*"))

    code = main([command])

    captured = capsys.readouterr()
    assert code == 2
    (line,) = captured.err.splitlines()
    assert line.startswith("error: tracking.mlflow_uri = 'sqlite:///mlflow.db'")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_two_processes_opening_a_new_sqlite_store_at_once_both_succeed(tmp_path: Path) -> None:
    """MLflow creates a new store's tables in every process that finds them missing; at once, they collide."""
    script = (
        "import os, sys, time\n"
        "from pathlib import Path\n"
        "from fashion_mlops.config import Params\n"
        "from fashion_mlops.tracking.store import connect\n"
        f"here = Path({str(tmp_path)!r})\n"
        "params = Params.model_validate({'data': {'sources': ['.']}, 'tracking': {\n"
        "    'mlflow_uri': f'sqlite:///{here}/mlflow.db', 'artifact_location': str(here / 'mlruns')}})\n"
        "(here / f'ready-{os.getpid()}').touch()\n"
        "while len(list(here.glob('ready-*'))) < 2:  # both have imported MLflow: now they open the store at once\n"
        "    time.sleep(0.01)\n"
        "print(connect(params))\n"
    )
    run = [sys.executable, "-c", script]
    processes = [subprocess.Popen(run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=300) for process in processes]

    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-2000:]
    assert {out.strip() for out, _ in outputs} == {"1"}  # one experiment, created once
