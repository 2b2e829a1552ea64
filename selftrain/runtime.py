"""Where and how tensors run: device choice, mixed precision, channels_last, torch.compile, seeding.

One code path for CPU and CUDA: the CUDA-only speedups switch on by themselves when a GPU is there.
"""

from __future__ import annotations

import contextlib
import logging
import random
from typing import cast

import numpy as np
import torch
from torch import nn


def pick_device(name: str = "auto") -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("runtime.device is 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    # the thread count is worth seeing: more threads than the cores a process really gets makes torch crawl
    logging.getLogger("selftrain").info("device %s, torch threads %d", name, torch.get_num_threads())
    return torch.device(name)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA; a no-op on CPU (keeps CPU runs bitwise reproducible)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def place(model: nn.Module, device: torch.device, compile: bool = False) -> nn.Module:
    # torch's stub lacks memory_format
    model = model.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    if compile and device.type == "cuda":
        model = cast(nn.Module, torch.compile(model))
    elif compile:  # measured slower on CPU for every step kind (docs/experiments/log.md, "torch.compile on the CPU")
        logging.getLogger("selftrain").info("runtime.compile is for CUDA: on %s the model runs uncompiled", device.type)
    return model


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    if x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a torch generator for data order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
