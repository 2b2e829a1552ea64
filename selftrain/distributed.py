"""Data-parallel training over several GPUs or nodes, one process per GPU, started by `torchrun`.

Each process takes its slice of every global batch (the same batches a single process takes) and
DDP averages the gradients, so the optimisation is the single-process one with per-GPU BatchNorm
(SyncBatchNorm on CUDA). Only rank 0 writes outputs and checkpoints. Without torchrun's environment
(WORLD_SIZE unset or 1) there is one process and nothing here does anything.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger("selftrain")

# How long a process waits in a collective for the others: past NCCL's 10-minute default, so that the other ranks
# outwait rank 0 writing a large checkpoint to S3 instead of the watchdog aborting them all
PROCESS_GROUP_TIMEOUT = timedelta(hours=1)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    grouped: bool = False  # a process group was joined (torchrun started this process), even of one process

    @property
    def main(self) -> bool:
        """The process that writes outputs and checkpoints."""
        return self.rank == 0

    @property
    def collective(self) -> bool:
        """The helpers below run their collectives: several processes, or a group of one under torchrun (so that
        `torchrun --nproc-per-node 1` on one GPU sends every collective through real NCCL)."""
        return self.size > 1 or self.grouped


def world() -> World:
    """The torchrun world of this process, its process group joined (NCCL on CUDA, else Gloo) and its GPU chosen.
    One process that torchrun did not start (no LOCAL_RANK) has no group."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1 and "LOCAL_RANK" not in os.environ:
        return World()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=PROCESS_GROUP_TIMEOUT)
        logger.info("process group %s, %d process(es), rank %d", dist.get_backend(), size, dist.get_rank())
    return World(dist.get_rank(), size, grouped=True)


def check_shares(batch: int, w: World, what: str) -> None:
    """Refuse a global batch that does not split evenly over the processes. DDP averages the processes' gradients
    with equal weight, so unequal shares (7/7/6) would weigh one process's images more than another's, and a
    process with no rows would train on an empty batch."""
    if batch % w.size:
        raise ValueError(
            f"{what} is {batch}, which does not split evenly over the {w.size} torchrun processes (each takes every "
            f"{w.size}th image, and DDP weighs every process the same): make it a multiple of {w.size}"
        )


def wrap(model: nn.Module, w: World, device: torch.device) -> nn.Module:
    """`model` for the training forward pass: itself in one process, DDP over the world otherwise."""
    if not w.collective:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(
            model, device_ids=[device.index if device.index is not None else torch.cuda.current_device()]
        )
    return DistributedDataParallel(model)


def _collective_device() -> torch.device:
    """Where a tensor collective's tensors must live: on the CPU when the group has a CPU backend (Gloo: its config
    reads "cpu:gloo,cuda:gloo"), else on this process's GPU (NCCL, "cuda:nccl": a CPU tensor fails with "No backend
    type associated with device type cpu")."""
    if "cpu:" in dist.get_backend_config():
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


def mean(values: torch.Tensor, w: World) -> torch.Tensor:
    """The mean of `values` over the world's processes (the epoch's loss and accuracy in the log), on `values`'
    device."""
    if not w.collective:
        return values
    summed = values.to(_collective_device(), copy=True)
    dist.all_reduce(summed)
    return (summed / w.size).to(values.device)


def all_gather_tensor(t: torch.Tensor, w: World) -> torch.Tensor:
    """Every process's `t`, concatenated along dim 0 in rank order, on every process and on `t`'s device. Every
    process's `t` must have the same shape: batches split evenly over the processes (`check_shares`)."""
    if not w.collective:
        return t
    mine = t.detach().to(_collective_device()).contiguous()
    out = torch.empty((w.size * mine.shape[0], *mine.shape[1:]), dtype=mine.dtype, device=mine.device)
    dist.all_gather_into_tensor(out, mine)
    return out.to(t.device)


def gather(obj: Any, w: World) -> list[Any] | None:
    """Every process's `obj` (picklable), in rank order, on rank 0; None on the others. [obj] in one process."""
    if not w.collective:
        return [obj]
    out: list[Any] | None = [None] * w.size if w.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier(w: World) -> None:
    if w.collective:
        dist.barrier()


def close() -> None:
    """Leave the process group (at the end of a torchrun process)."""
    if dist.is_initialized():
        dist.destroy_process_group()
