"""Pseudo-labels from stored teacher outputs: confidence filter, per-class balance, soft or hard targets.

Balancing follows the Noisy Student reference code (filter_unlabel.py): per class, a
histogram of confidence in 0.01 bins picks the highest threshold (not below the global one)
that still keeps N images; every kept image then gets N / kept_in_class copies, rounded
stochastically (int(c) + (u < frac)), so full classes are subsampled and short ones duplicated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from selftrain.params import PseudoLabelParams

GRID = np.arange(101) / 100.0  # thresholds 0.00, 0.01, ..., 1.00 as in the reference code


class PseudoLabelError(ValueError):
    """The teacher's outputs leave nothing to train on, or are malformed."""


@dataclass(frozen=True)
class Selection:
    rows: np.ndarray  # int64 row in the unlabeled split, repeated once per copy
    targets: np.ndarray  # float32 (len(rows), C): soft probabilities or one-hot
    stats: dict[str, Any]


def _softmax(log_probs: np.ndarray, temperature: float) -> np.ndarray:
    z = log_probs / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def class_threshold(confidence: np.ndarray, n: int, floor: float) -> float:
    """Highest grid threshold >= floor with at least n images at or above it; `floor` when none has."""
    # counts[j] = number of images with confidence >= GRID[j], computed the reference way via bins
    bins = np.searchsorted(GRID, confidence, side="right") - 1
    counts = np.cumsum(np.bincount(bins, minlength=len(GRID))[::-1])[::-1]
    for j in range(len(GRID) - 1, -1, -1):
        if GRID[j] < floor:
            break
        if counts[j] >= n:
            return float(GRID[j])
    return floor


def select(log_probs: np.ndarray, p: PseudoLabelParams, seed: int, classes: tuple[str, ...]) -> Selection:
    """Choose pseudo-labeled rows and their targets from (N, C) teacher log-probabilities."""
    if log_probs.ndim != 2 or log_probs.shape[1] != len(classes):
        raise PseudoLabelError(f"teacher outputs have shape {log_probs.shape}, expected (N, {len(classes)})")
    if len(log_probs) == 0:
        raise PseudoLabelError("the unlabeled set is empty: nothing to pseudo-label")
    if np.isnan(log_probs).any() or np.isposinf(log_probs).any():
        raise PseudoLabelError("teacher outputs contain NaN or +inf")
    rng = np.random.default_rng(seed)
    # Confidence is the top probability at temperature 1 (exact for log-softmax values, even top-k).
    confidence = np.exp(log_probs.max(axis=1))
    predicted = log_probs.argmax(axis=1)
    kept = confidence >= p.threshold
    if not kept.any():
        raise PseudoLabelError(
            f"no unlabeled image has confidence >= pseudo_labels.threshold = {p.threshold} "
            f"(highest is {confidence.max():.3f}); lower the threshold or train the teacher longer"
        )
    num_classes = len(classes)
    kept_counts = np.bincount(predicted[kept], minlength=num_classes)
    if p.per_class == "median":
        n_target: int | None = int(np.median(kept_counts[kept_counts > 0]))
    else:
        n_target = p.per_class

    rows_out, per_class = [], {}
    for c in range(num_classes):
        members = np.flatnonzero(kept & (predicted == c))
        conf_c = confidence[members]
        if n_target is None:
            t_c, chosen, copies = p.threshold, members, np.ones(len(members), dtype=np.int64)
        else:
            t_c = class_threshold(conf_c, n_target, p.threshold)
            chosen = members[conf_c >= t_c]
            ratio = n_target / len(chosen) if len(chosen) else 0.0
            if not p.upsample:
                ratio = min(ratio, 1.0)
            frac = ratio - int(ratio)
            copies = int(ratio) + (rng.random(len(chosen)) < frac).astype(np.int64)
        rows_out.append(np.repeat(chosen, copies))
        per_class[classes[c]] = {
            "predicted": int((predicted == c).sum()),
            "above_threshold": int(len(members)),
            "class_threshold": round(t_c, 4),
            "selected": int(len(chosen)),
            "after_balance": int(copies.sum()),
        }
    rows = np.concatenate(rows_out).astype(np.int64)
    if len(rows) == 0:
        raise PseudoLabelError("balancing left no pseudo-labeled image; check pseudo_labels.per_class")
    if p.kind == "soft":
        targets = _softmax(log_probs[rows], p.temperature)
    else:
        targets = np.eye(num_classes)[predicted[rows]]
    stats = {
        "kind": p.kind,
        "threshold": p.threshold,
        "per_class_target": n_target,
        "total": {
            "unlabeled": int(len(log_probs)),
            "above_threshold": int(kept.sum()),
            "after_balance": int(len(rows)),
            "unique_after_balance": int(len(np.unique(rows))),
        },
        "per_class": per_class,
    }
    return Selection(rows, targets.astype(np.float32), stats)
