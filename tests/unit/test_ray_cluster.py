"""The Ray executor's own rules, without a cluster: what a task asks for, how many run at once, and how a remote
cell's TensorBoard files come back (only into tracking.tensorboard_dir)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fashion_mlops.config import TrainConfig, load_params
from fashion_mlops.executors.ray_cluster import (
    Capacity,
    CollectedExports,
    Request,
    _collect_events,
    _fits,
    _write_events,
    remote_runs,
    request_for,
)
from fashion_mlops.sweep import CellOutcome
from fashion_mlops.tracking import NullCellRuns
from fashion_mlops.tracking.runs import CellRunFactory
from helpers import tiny_params, write_params


def outcome(tmp_path: Path, **train: object) -> CellOutcome:
    params = load_params(write_params(tmp_path / "params.yaml", tiny_params(tmp_path, tmp_path)))
    cell = params.cells()[0]
    return CellOutcome(cell.model_copy(update={"train": TrainConfig(**(cell.train.model_dump() | train))}))


def test_a_task_asks_for_its_threads_capped_at_the_largest_node_and_a_gpu_only_where_it_trains_on_one(
    tmp_path: Path,
) -> None:
    cpu_only = Capacity(cpus=8, gpus=0, largest_node_cpus=4)
    assert request_for(outcome(tmp_path, threads=2).cell.train, cpu_only, default_threads=6) == Request(2, 0)
    assert request_for(outcome(tmp_path).cell.train, cpu_only, default_threads=6) == Request(4, 0)
    with_gpus = Capacity(cpus=8, gpus=2, largest_node_cpus=4)
    assert request_for(outcome(tmp_path, device="auto").cell.train, with_gpus, default_threads=2) == Request(2, 1)
    assert request_for(outcome(tmp_path, device="cpu").cell.train, with_gpus, default_threads=2) == Request(2, 0)


def test_only_as_many_tasks_run_as_the_cluster_has_cpus_for(tmp_path: Path) -> None:
    capacity = Capacity(cpus=4, gpus=0, largest_node_cpus=2)
    cell = outcome(tmp_path, threads=2)
    request = request_for(cell.cell.train, capacity, default_threads=2)
    assert _fits(request, {}, capacity)
    assert _fits(request, {"a": (cell, Request(2, 0))}, capacity)
    assert not _fits(request, {"a": (cell, Request(2, 0)), "b": (cell, Request(2, 0))}, capacity)


def test_a_task_collects_the_models_it_trains_instead_of_using_the_export_queue(tmp_path: Path) -> None:
    params = load_params(write_params(tmp_path / "params.yaml", tiny_params(tmp_path, tmp_path)))
    factory = CellRunFactory(params, "sweep", "1", {}, "data", "digest", 2, exports=object())
    remote = remote_runs(factory)
    assert isinstance(remote.exports, CollectedExports) and remote.exports.items == []
    assert remote.sweep_run_id == "sweep"
    untracked = NullCellRuns()
    assert remote_runs(untracked) is untracked


def test_a_remote_cells_events_come_back_to_the_same_path_under_the_tensorboard_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote, here = tmp_path / "remote", tmp_path / "here"
    log_dir = Path("runs") / "abcd1234" / "run-00"
    (remote / log_dir).mkdir(parents=True)
    (remote / log_dir / "events.out.tfevents.1.host.1.0").write_bytes(b"event bytes")
    monkeypatch.chdir(remote)
    events = _collect_events(log_dir)
    assert events == {str(log_dir / "events.out.tfevents.1.host.1.0"): b"event bytes"}

    here.mkdir()
    monkeypatch.chdir(here)
    _write_events(events, "runs")
    assert (here / log_dir / "events.out.tfevents.1.host.1.0").read_bytes() == b"event bytes"


@pytest.mark.parametrize("name", ["../outside", "runs/../outside", "{tmp}/absolute-outside", "other/file"])
def test_a_returned_event_file_outside_the_tensorboard_dir_is_not_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.chdir(tmp_path)
    _write_events({name: b"x"}, "runs")
    assert not (tmp_path / "outside").exists()
    assert not Path("{tmp}/absolute-outside").exists()
    assert not (tmp_path / "other").exists()
