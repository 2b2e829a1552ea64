"""Data-parallel training over several GPUs or nodes, one process per GPU, started by `torchrun`.

Each process takes its slice of every global batch (the same batches a single process takes) and
DDP averages the gradients, so the optimisation is the single-process one with per-GPU BatchNorm
(SyncBatchNorm on CUDA). Only rank 0 writes outputs and checkpoints. Without torchrun's environment
(WORLD_SIZE unset or 1) there is one process and nothing here does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """The process that writes outputs and checkpoints."""
        return self.rank == 0


def world() -> World:
    """The torchrun world of this process, its process group joined (NCCL on CUDA, else Gloo) and its GPU chosen."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(dist.get_rank(), size)


def wrap(model: nn.Module, w: World, device: torch.device) -> nn.Module:
    """`model` for the training forward pass: itself in one process, DDP over the world otherwise."""
    if w.size == 1:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return DistributedDataParallel(
            model, device_ids=[device.index if device.index is not None else torch.cuda.current_device()]
        )
    return DistributedDataParallel(model)


def mean(values: torch.Tensor, w: World) -> torch.Tensor:
    """The mean of `values` over the world's processes (the epoch's loss and accuracy in the log)."""
    if w.size > 1:
        values = values.clone()
        dist.all_reduce(values)
        values /= w.size
    return values


def gather(obj: Any, w: World) -> list[Any] | None:
    """Every process's `obj` (picklable), in rank order, on rank 0; None on the others. [obj] in one process."""
    if w.size == 1:
        return [obj]
    out: list[Any] | None = [None] * w.size if w.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather(obj: Any, w: World) -> list[Any]:
    """Every process's `obj` (picklable; tensors on the CPU), in rank order, on every process. [obj] in one process."""
    if w.size == 1:
        return [obj]
    out: list[Any] = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def barrier(w: World) -> None:
    if w.size > 1:
        dist.barrier()


def close() -> None:
    """Leave the process group (at the end of a torchrun process)."""
    if dist.is_initialized():
        dist.destroy_process_group()
