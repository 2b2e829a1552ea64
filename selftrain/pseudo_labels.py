"""Pseudo-labels from stored teacher outputs: confidence filter, per-class balance, soft or hard targets.

Balancing follows the Noisy Student reference code (filter_unlabel.py): per class, a
histogram of confidence in 0.01 bins picks the highest threshold (not below the global one)
that still keeps N images; every kept image then gets N / kept_in_class copies, rounded
stochastically, so full classes are subsampled and short ones duplicated. The reference rounds
each image independently (int(c) + (u < frac)), so its class totals are N only on average; here
exactly N mod k images, drawn at random, get the extra copy, so every class totals exactly N.
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
    probs: np.ndarray  # float32 (len(rows), C): the teacher's full probability vector (temperature 1)
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


def _copies(k: int, n: int, upsample: bool, rng: np.random.Generator) -> np.ndarray:
    """Copies of each of k images so that they total exactly n: floor(n/k) each, plus one for n mod k of them at random."""
    if k == 0 or (k < n and not upsample):
        return np.ones(k, dtype=np.int64)
    copies = np.full(k, n // k, dtype=np.int64)
    copies[rng.choice(k, n % k, replace=False)] += 1
    return copies


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
    bins = np.searchsorted(GRID, confidence, side="right") - 1
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
            copies = _copies(len(chosen), n_target, p.upsample, rng)
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
    kept_bins = np.searchsorted(GRID, confidence[rows], side="right") - 1
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
        # images per 0.01 bin of top probability [GRID[j], GRID[j] + 0.01): all of them, and the balanced set
        "confidence_histogram": {
            "all": np.bincount(bins, minlength=len(GRID)).tolist(),
            "after_balance": np.bincount(kept_bins, minlength=len(GRID)).tolist(),
        },
    }
    return Selection(rows, targets.astype(np.float32), np.exp(log_probs[rows]).astype(np.float32), stats)
