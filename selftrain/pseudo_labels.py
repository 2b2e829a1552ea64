"""Pseudo-labels from stored teacher outputs: confidence filter, per-class balance, soft or hard targets.

Balancing follows the Noisy Student reference code (filter_unlabel.py): per class, a
histogram of confidence in 0.01 bins picks the highest threshold (not below the global one)
that still keeps N images; every kept image then gets N / kept_in_class copies, rounded
stochastically, so full classes are subsampled and short ones duplicated. The reference rounds
each image independently (int(c) + (u < frac)), so its class totals are N only on average; here
exactly N mod k images, drawn at random, get the extra copy, so every class totals exactly N.

It runs in two passes over the teacher's outputs, chunk by chunk (the logit store's shards), so memory
does not grow with the unlabeled pool beyond a few bytes per image: `Tally` counts per-class confidence
histograms, `plan` turns them into class thresholds and copies, `Selector` picks each chunk's rows.
The output is in row order, each row's copies together; targets are sparse (class indices and
probabilities: the stored top k, all classes for a dense store, one for hard labels).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selftrain.params import PseudoLabelParams

GRID = np.arange(101) / 100.0  # thresholds 0.00, 0.01, ..., 1.00 as in the reference code


class PseudoLabelError(ValueError):
    """The teacher's outputs leave nothing to train on, or are malformed."""



@dataclass(frozen=True)
class Chunk:
    """Teacher log-probabilities of consecutive unlabeled rows: dense (n, C), or top-k values with their class indices."""

    start: int  # row of the first image in the unlabeled split
    values: np.ndarray  # (n, C) or (n, k)
    indices: np.ndarray | None = None  # (n, k) class indices of a top-k store

    def top(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row's top log-probability (float64) and its class."""
        v = self.values.astype(np.float64)
        if np.isnan(v).any() or np.isposinf(v).any():
            raise PseudoLabelError(f"teacher outputs contain NaN or +inf (rows {self.start}..{self.start + len(v) - 1})")
        best = v.argmax(axis=1)
        cls = best if self.indices is None else np.take_along_axis(self.indices, best[:, None], axis=1)[:, 0]
        return np.take_along_axis(v, best[:, None], axis=1)[:, 0], cls.astype(np.int64)


def _bins(confidence: np.ndarray) -> np.ndarray:
    return np.searchsorted(GRID, confidence, side="right") - 1


@dataclass
class Tally:
    """Pass 1: per-class histograms of confidence (top probability at temperature 1) over the rows above the threshold."""

    num_classes: int
    threshold: float
    count: int = 0
    highest: float = 0.0
    predicted: np.ndarray = field(init=False)
    hist_all: np.ndarray = field(init=False)
    hist_kept: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.predicted = np.zeros(self.num_classes, np.int64)
        self.hist_all = np.zeros(len(GRID), np.int64)
        self.hist_kept = np.zeros((self.num_classes, len(GRID)), np.int64)

    def add(self, chunk: Chunk) -> None:
        top, cls = chunk.top()
        confidence, kept = np.exp(top), np.exp(top) >= self.threshold
        bins = _bins(confidence)
        self.count += len(top)
        self.highest = max(self.highest, float(confidence.max(initial=0.0)))
        self.predicted += np.bincount(cls, minlength=self.num_classes)
        self.hist_all += np.bincount(bins, minlength=len(GRID))
        self.hist_kept += np.bincount(cls[kept] * len(GRID) + bins[kept], minlength=self.hist_kept.size).reshape(self.hist_kept.shape)


def class_threshold(confidence: np.ndarray, n: int, floor: float) -> float:
    """Highest grid threshold >= floor with at least n images at or above it; `floor` when none has."""
    return _threshold_from_hist(np.bincount(_bins(confidence), minlength=len(GRID)), n, floor)


def _threshold_from_hist(hist: np.ndarray, n: int, floor: float) -> float:
    counts = np.cumsum(hist[::-1])[::-1]  # counts[j]: images with confidence >= GRID[j]
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


@dataclass
class Plan:
    """What pass 1 decided: per class, the lowest confidence bin chosen and each chosen image's copies (in row order)."""

    first_bin: np.ndarray  # (C,) chosen: above the global threshold and in a bin >= this
    copies: np.ndarray  # one entry per chosen image: class 0's in row order, then class 1's, ...
    offsets: np.ndarray  # (C + 1,) where each class's entries start in `copies`
    stats: dict


def plan(tally: Tally, p: PseudoLabelParams, seed: int, classes: tuple[str, ...]) -> Plan:
    """Class thresholds, the balanced size and every chosen image's copies, from pass 1's counts alone."""
    if tally.count == 0:
        raise PseudoLabelError("the unlabeled set is empty: nothing to pseudo-label")
    kept_counts = tally.hist_kept.sum(axis=1)
    if not kept_counts.any():
        raise PseudoLabelError(
            f"no unlabeled image has confidence >= pseudo_labels.threshold = {p.threshold} "
            f"(highest is {tally.highest:.3f}); lower the threshold or train the teacher longer"
        )
    n_target = int(np.median(kept_counts[kept_counts > 0])) if p.per_class == "median" else p.per_class
    rng = np.random.default_rng(seed)
    first_bin, copies, per_class = np.zeros(len(classes), np.int64), [], {}
    for c in range(len(classes)):
        if n_target is None:
            t_c = p.threshold
        else:
            t_c = _threshold_from_hist(tally.hist_kept[c], n_target, p.threshold)
        # a grid threshold is a bin edge: confidence >= GRID[j] exactly when its bin >= j
        first_bin[c] = int(np.searchsorted(GRID, t_c)) if t_c in GRID else 0
        chosen = int(tally.hist_kept[c, first_bin[c]:].sum())
        copies.append(np.ones(chosen, np.int64) if n_target is None else _copies(chosen, n_target, p.upsample, rng))
        per_class[classes[c]] = {
            "predicted": int(tally.predicted[c]),
            "above_threshold": int(kept_counts[c]),
            "class_threshold": round(t_c, 4),
            "selected": chosen,
            "after_balance": int(copies[-1].sum()),
        }
    total = sum(int(c.sum()) for c in copies)
    if total == 0:
        raise PseudoLabelError("balancing left no pseudo-labeled image; check pseudo_labels.per_class")
    stats = {
        "kind": p.kind,
        "threshold": p.threshold,
        "per_class_target": n_target,
        "total": {
            "unlabeled": tally.count,
            "above_threshold": int(kept_counts.sum()),
            "after_balance": total,
            "unique_after_balance": sum(int((c > 0).sum()) for c in copies),
        },
        "per_class": per_class,
        # images per 0.01 bin of top probability [GRID[j], GRID[j] + 0.01): all of them, and the balanced set (pass 2 fills it)
        "confidence_histogram": {"all": tally.hist_all.tolist(), "after_balance": [0] * len(GRID)},
    }
    return Plan(first_bin, np.concatenate(copies), np.concatenate([[0], np.cumsum([len(c) for c in copies])]), stats)


@dataclass(frozen=True)
class Picked:
    """One chunk's pseudo-labels: rows (repeated once per copy) and sparse targets."""

    rows: np.ndarray  # int64
    target_indices: np.ndarray  # int32 (n, w)
    target_values: np.ndarray  # float32 (n, w), each row summing to 1


class Selector:
    """Pass 2: each chunk's chosen rows with their copies and targets; chunks must come in row order."""

    def __init__(self, plan: Plan, p: PseudoLabelParams, threshold: float) -> None:
        self.plan, self.p, self.threshold = plan, p, threshold
        self.seen = np.zeros(len(plan.first_bin), np.int64)  # chosen images of each class met so far

    def take(self, chunk: Chunk) -> Picked:
        top, cls = chunk.top()
        confidence = np.exp(top)
        bins = _bins(confidence)
        chosen = np.flatnonzero((confidence >= self.threshold) & (bins >= self.plan.first_bin[cls]))
        c = cls[chosen]
        # each chosen image's place among its class's chosen images: counts before this chunk + rank within it
        order = np.argsort(c, kind="stable")
        starts = np.searchsorted(c[order], c[order])
        place = np.empty(len(c), np.int64)
        place[order] = np.arange(len(c)) - starts
        place += self.seen[c]
        self.seen += np.bincount(c, minlength=len(self.seen))
        copies = self.plan.copies[self.plan.offsets[c] + place]
        picked = np.repeat(chosen, copies)
        hist = self.plan.stats["confidence_histogram"]["after_balance"]
        for b, n in zip(*np.unique(np.repeat(bins[chosen], copies), return_counts=True)):
            hist[b] += int(n)
        if self.p.kind == "hard":
            indices, values = cls[picked][:, None], np.ones((len(picked), 1))
        else:
            v = chunk.values[picked].astype(np.float64) / self.p.temperature
            v = np.exp(v - v.max(axis=1, keepdims=True))  # stored top-k: the other classes' probability is 0
            values = v / v.sum(axis=1, keepdims=True)
            indices = chunk.indices[picked] if chunk.indices is not None else np.broadcast_to(np.arange(v.shape[1]), v.shape)
        return Picked(chunk.start + picked.astype(np.int64), np.ascontiguousarray(indices, np.int32), values.astype(np.float32))


def two_passes(chunks: Callable[[], Iterable[Chunk]], p: PseudoLabelParams, seed: int, classes: tuple[str, ...]) -> tuple[Plan, Iterator[Picked]]:
    """Read `chunks()` (in row order) once to plan, and again, lazily, to pick: (the plan, each chunk's pseudo-labels).

    The plan's after-balance histogram is complete once the picks have all been taken."""
    tally = Tally(len(classes), p.threshold)
    for chunk in chunks():
        tally.add(chunk)
    decided = plan(tally, p, seed, classes)
    selector = Selector(decided, p, p.threshold)
    return decided, (selector.take(chunk) for chunk in chunks())


def dense(indices: np.ndarray, values: np.ndarray, num_classes: int) -> np.ndarray:
    """Sparse targets as an (n, C) float32 array."""
    out = np.zeros((len(indices), num_classes), np.float32)
    np.put_along_axis(out, indices.astype(np.int64), values, axis=1)
    return out


@dataclass(frozen=True)
class Selection:
    rows: np.ndarray  # int64 row in the unlabeled split, repeated once per copy, in row order
    targets: np.ndarray  # float32 (len(rows), C): soft probabilities or one-hot
    stats: dict[str, Any]


def select(log_probs: np.ndarray, p: PseudoLabelParams, seed: int, classes: tuple[str, ...]) -> Selection:
    """Choose pseudo-labeled rows and their targets from (N, C) teacher log-probabilities held in memory."""
    if log_probs.ndim != 2 or log_probs.shape[1] != len(classes):
        raise PseudoLabelError(f"teacher outputs have shape {log_probs.shape}, expected (N, {len(classes)})")
    decided, picks = two_passes(lambda: [Chunk(0, log_probs)], p, seed, classes)
    [picked] = list(picks)
    return Selection(picked.rows, dense(picked.target_indices, picked.target_values, len(classes)), decided.stats)
