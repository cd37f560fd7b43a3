"""The process group of a `torchrun` launch: which process this is, the group's set-up and teardown, and the
collectives that keep its ranks in step.

Without torchrun's environment (RANK, WORLD_SIZE) there is one process and no group, and every helper here is a
no-op: a plain run behaves exactly as before. torch is imported inside the functions that need it, because the
sweep command asks `world()` before it imports torch (its model exporter starts meanwhile).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from fashion_mlops import interrupts
from fashion_mlops.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fashion_mlops.config import Params

LEADER = 0  # the rank that tracks, exports and reports
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the processes torchrun started: its rank, and how many there are."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # its rank on this host, which picks its GPU
    local_size: int = 1  # processes on this host, which share its CPU cores

    @property
    def leader(self) -> bool:
        return self.rank == LEADER


def world() -> World:
    """This process's place in a torchrun launch, from the environment torchrun sets; one process without it."""
    env = os.environ
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return World()
    rank, size = int(env["RANK"]), int(env["WORLD_SIZE"])
    return World(rank, size, int(env.get("LOCAL_RANK", rank)), int(env.get("LOCAL_WORLD_SIZE", size)))


def per_rank_batch(batch_size: int, ranks: int, where: str = "train.batch_size") -> int:
    """The images each rank trains on per step; ConfigError unless `batch_size` splits evenly among the ranks."""
    if batch_size % ranks:
        raise ConfigError(
            f"{where} = {batch_size}: must split evenly among the {ranks} torchrun processes (--nproc_per_node); "
            f"use a multiple of {ranks}"
        )
    return batch_size // ranks


def check_sweep(params: Params, launched: World) -> None:
    """Refuse, before anything starts, a sweep that cannot run under this torchrun launch (one-line ConfigError)."""
    if launched.size == 1:
        return
    sweep = params.sweep
    if sweep.search != "grid":
        raise ConfigError(
            f"sweep.search = {sweep.search}: a sampled search runs its trials one by one here or on Ray "
            "(sweep.executor: ray), not under torchrun; run it without torchrun, or use search grid"
        )
    if sweep.workers > 1 or sweep.executor != "local":
        raise ConfigError(
            f"sweep.workers = {sweep.workers}, sweep.executor = {sweep.executor}: under torchrun every process "
            "trains each cell together (DDP); set sweep.workers: 1 and sweep.executor: local, or run without torchrun"
        )
    for cell in params.cells():
        where = f"train.batch_size (cell {cell.name})" if "batch_size" in cell.swept else "train.batch_size"
        per_rank_batch(cell.train.batch_size, launched.size, where)


def default_threads(single_process: int) -> int:
    """CPU threads a cell trains with unless train.threads says: under torchrun, this host's cores shared among its
    processes (torchrun's default OMP_NUM_THREADS=1 would leave the rest idle); else `single_process`."""
    launched = world()
    if launched.size == 1:
        return single_process
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // launched.local_size)


@contextmanager
def process_group(launched: World) -> Iterator[None]:
    """Join the group torchrun's processes form (env://), and leave it afterwards; nothing in one process.

    gloo carries CPU tensors and pickled objects; NCCL carries CUDA tensors where there is a GPU, each process on
    the GPU of its local rank.
    """
    if launched.size == 1:
        yield
        return
    import torch
    import torch.distributed as dist

    backend = "gloo"
    if torch.cuda.is_available():
        backend = "cpu:gloo,cuda:nccl"
        if launched.local_rank < torch.cuda.device_count():
            torch.cuda.set_device(launched.local_rank)
    dist.init_process_group(backend, init_method="env://")
    try:
        yield
    finally:
        dist.destroy_process_group()


def active() -> bool:
    """A process group of more than one process is up."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def from_leader(value: T) -> T:
    """Rank 0's `value`, on every rank (pickled); `value` itself in one process."""
    if not active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=LEADER)
    return box[0]


def all_sum(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` summed over the ranks, in place; `tensor` itself in one process."""
    if active():
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def check_interrupts() -> None:
    """`interrupts.check()`, decided together: once any rank was signalled, every rank stops at the same step (one
    that stopped alone would leave the others waiting in their next all-reduce)."""
    if not active():
        interrupts.check()
        return
    import torch

    try:
        interrupts.check()
        signalled = 0
    except KeyboardInterrupt:
        signalled = 1
    if all_sum(torch.tensor(signalled)).item():
        raise KeyboardInterrupt("a torchrun process was signalled")


def data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` wrapped in DistributedDataParallel, which averages the gradients over the ranks; `model` itself in one
    process.

    BatchNorm: on CUDA its layers become SyncBatchNorm (statistics over the whole batch). On CPU there is none
    (gloo), so each rank normalises by its own share of the batch, and DDP (broadcast_buffers) copies rank 0's running
    statistics to every rank before each training step.
    """
    if world().size == 1:
        return model
    if not active():
        raise RuntimeError("torchrun started this process, but it joined no process group (see process_group)")
    import torch
    from torch import nn
    from torch.nn.parallel import DistributedDataParallel

    if device.type != "cuda":
        return DistributedDataParallel(model)
    launched = world()
    if launched.local_rank >= torch.cuda.device_count():
        raise ConfigError(
            f"torchrun started {launched.local_size} processes on a host with {torch.cuda.device_count()} GPU(s): "
            "give --nproc_per_node no more than its GPUs, or set train.device: cpu"
        )
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # swaps the layers inside `model`, the caller's object
    return DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm's running statistics) to every rank, so all of them hold rank 0's model."""
    if not active():
        return
    import torch.distributed as dist

    for buffer in model.buffers():
        dist.broadcast(buffer, src=LEADER)
