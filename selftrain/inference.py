"""Batched clean inference: the teacher in eval mode, no augmentation."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from selftrain import runtime
from selftrain.noise import clean_batch


@torch.no_grad()
def iter_logits(
    model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device, desc: str | None = None
) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield (rows, float32 logits on CPU) batch by batch, with a progress bar when `desc` is given."""
    model.eval()
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", disable=desc is None, mininterval=2.0):
        rows = slice(start, min(start + batch_size, len(images)))
        x = runtime.to_device(clean_batch(images[rows]), device)
        with runtime.autocast(device):
            out = model(x)
        yield rows, out.float().cpu()


def predict_logits(model: nn.Module, images: np.ndarray, batch_size: int, device: torch.device, desc: str | None = None) -> torch.Tensor:
    return torch.cat([out for _, out in iter_logits(model, images, batch_size, device, desc)])
