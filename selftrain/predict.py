"""Batched clean inference: the teacher in eval mode, no augmentation."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from selftrain import runtime
from selftrain.inputs import clean_batch


@torch.no_grad()
def batch_logits(
    model: nn.Module,
    batches: Iterable[np.ndarray],
    device: torch.device,
    total: int | None = None,
    desc: str | None = None,
) -> Iterator[torch.Tensor]:
    """Float32 logits on CPU of each batch of uint8 NHWC images, with a progress bar when `desc` is given."""
    model.eval()
    for images in tqdm(batches, total=total, desc=desc, unit="batch", disable=desc is None, mininterval=2.0):
        x = runtime.to_device(clean_batch(images), device)
        with runtime.autocast(device):
            out = model(x)
        yield out.float().cpu()


def iter_logits(
    model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device, desc: str | None = None
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (rows, float32 logits on CPU) batch by batch, with a progress bar when `desc` is given."""
    starts = range(0, len(images), batch_size)
    batches = (images[start : start + batch_size] for start in starts)
    for start, out in zip(starts, batch_logits(model, batches, device, len(starts), desc)):
        yield slice(start, start + len(out)), out


def predict_logits(
    model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device, desc: str | None = None
) -> torch.Tensor:
    return torch.cat([out for _, out in iter_logits(model, images, batch_size, device, desc)])
