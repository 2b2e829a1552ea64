"""Clean accuracy of a model on a labeled split."""

from __future__ import annotations

import torch
from torch import nn

from selftrain.data import Split
from selftrain.predict import predict_logits


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the k largest logits."""
    if len(labels) == 0:
        raise ValueError("cannot measure accuracy on an empty set")
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels[:, None]).any(dim=1).float().mean().item()


def accuracy(
    model: nn.Module, split: Split, batch_size: int, device: torch.device, desc: str | None = None
) -> dict[str, float]:
    """top1, and top5 where the split has more than 5 classes."""
    was_training = model.training
    logits = predict_logits(model, split.images, batch_size, device, desc)
    model.train(was_training)
    labels = torch.from_numpy(split.labels)
    result = {"top1": topk_accuracy(logits, labels, 1)}
    if len(split.classes) > 5:
        result["top5"] = topk_accuracy(logits, labels, 5)
    return result
