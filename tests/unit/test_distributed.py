"""Under torchrun each process knows its rank from the environment, refuses what DDP cannot do, and its share of a
batch adds up to one process's step: the same augmentation and the same gradient. (The real launch is in
tests/e2e/test_torchrun.py.)"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from fashion_mlops import distributed
from fashion_mlops.config import Params, TrainConfig
from fashion_mlops.distributed import World
from fashion_mlops.errors import ConfigError
from fashion_mlops.train import augment, batch_loss, resolved_settings

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch):
    """Set the environment torchrun gives rank `rank` of `size` processes on one host."""
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)

    def launch(rank: int, size: int) -> None:
        values = (rank, size, rank, size)
        for name, value in zip(TORCHRUN_ENV, values, strict=True):
            monkeypatch.setenv(name, str(value))

    return launch


def params(**sweep) -> Params:
    return Params.model_validate({"data": {"sources": ["/nowhere"]}, "sweep": sweep})


def test_without_torchrun_there_is_one_process_and_it_leads(launched) -> None:
    assert distributed.world() == World(rank=0, size=1, local_rank=0, local_size=1)
    assert distributed.world().leader


def test_a_torchrun_process_reads_its_rank_from_the_environment(launched) -> None:
    launched(rank=1, size=2)

    assert distributed.world() == World(rank=1, size=2, local_rank=1, local_size=2)
    assert not distributed.world().leader


def test_a_batch_splits_among_the_ranks_or_is_refused_in_one_line() -> None:
    assert distributed.per_rank_batch(100, 4) == 25

    with pytest.raises(ConfigError, match=r"^train.batch_size = 33: must split evenly among the 2 torchrun") as error:
        distributed.per_rank_batch(33, 2)
    assert "\n" not in str(error.value)


def test_torchrun_refuses_a_swept_batch_size_that_does_not_split_naming_the_cell() -> None:
    with pytest.raises(ConfigError, match=r"train.batch_size \(cell run-01-batch_size=50\) = 50: .* 4 torchrun"):
        distributed.check_sweep(params(grid={"batch_size": [64, 50]}), World(rank=0, size=4))


@pytest.mark.parametrize("sweep", [{"workers": 2}, {"executor": "ray"}])
def test_torchrun_refuses_worker_processes_and_ray(sweep) -> None:
    with pytest.raises(ConfigError, match="under torchrun every process trains each cell together"):
        distributed.check_sweep(params(**sweep), World(rank=0, size=2))


def test_torchrun_refuses_a_sampled_search() -> None:
    search = {"search": "tpe", "grid": {}, "space": {"lr": [0.01, 0.001]}}
    with pytest.raises(ConfigError, match=r"sweep\.search = tpe: a sampled search runs its trials one by one"):
        distributed.check_sweep(params(**search), World(rank=0, size=2))


def test_one_process_is_never_refused_for_what_only_ddp_cannot_do() -> None:
    distributed.check_sweep(params(workers=2, grid={"batch_size": [33]}), World())


def test_the_fingerprint_settings_hold_the_world_size_only_under_torchrun(launched) -> None:
    single = resolved_settings(TrainConfig(device="cpu"), threads=2)
    launched(rank=0, size=2)
    ddp = resolved_settings(TrainConfig(device="cpu"), threads=2)

    assert "world_size" not in single  # the fingerprints of one-process runs stay as they were
    assert ddp == single | {"world_size": 2}


def test_torchrun_shares_the_cores_among_the_processes_of_a_host(launched) -> None:
    assert distributed.default_threads(single_process=3) == 3
    launched(rank=0, size=2)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert distributed.default_threads(single_process=1) == max(1, cores // 2)


@pytest.mark.parametrize("kind", ["flip", "crop_flip"])
def test_each_rank_augments_its_share_as_one_process_augments_the_whole_batch(kind) -> None:
    images = torch.rand(15, 1, 28, 28)  # an odd batch: 8 images for rank 0, 7 for rank 1
    whole_generator = torch.Generator().manual_seed(5)
    whole = augment(images, kind, whole_generator)

    for rank in range(2):
        share = slice(rank, None, 2)
        generator = torch.Generator().manual_seed(5)
        part = augment(images[share], kind, generator, part=share, of=len(images))

        assert torch.equal(part, whole[share])
        assert torch.equal(generator.get_state(), whole_generator.get_state())  # in step for the next batch


def test_the_ranks_averaged_gradients_are_one_processs_gradient_on_an_uneven_batch() -> None:
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    x, y = torch.randn(15, 6), torch.randint(0, 4, (15,))

    def gradient(inputs: torch.Tensor, labels: torch.Tensor, ranks: int) -> torch.Tensor:
        model.zero_grad()
        batch_loss(model(inputs), labels, 0.1, images=len(x), ranks=ranks).backward()
        return model.weight.grad.clone()

    one_process = gradient(x, y, ranks=1)
    ddp_average = sum(gradient(x[r::2], y[r::2], ranks=2) for r in range(2)) / 2  # what DDP's all-reduce does

    torch.testing.assert_close(ddp_average, one_process)
