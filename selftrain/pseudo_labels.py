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

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from selftrain.parallel import ordered_map
from selftrain.params import PseudoLabelParams

GRID = np.arange(101) / 100.0  # thresholds 0.00, 0.01, ..., 1.00 as in the reference code


class PseudoLabelError(ValueError):
    """The teacher's outputs leave nothing to train on, or are malformed."""


@dataclass(frozen=True)
class Chunk:
    """Teacher log-probabilities of consecutive unlabeled rows: dense (n, C), or top-k values with their class
    indices."""

    start: int  # row of the first image in the unlabeled split
    values: np.ndarray  # (n, C), or (n, k) with each row in descending order (as the logit store keeps them)
    indices: np.ndarray | None = None  # (n, k) class indices of a top-k store

    def top(self) -> tuple[np.ndarray, np.ndarray]:
        """Each row's top log-probability (in the values' dtype) and its class."""
        if self.indices is not None:  # descending rows: the top is column 0
            return self.values[:, 0], self.indices[:, 0].astype(np.int64)
        best = self.values.argmax(axis=1)  # NaN wins argmax, so a NaN row shows up in its top
        return np.take_along_axis(self.values, best[:, None], axis=1)[:, 0], best


def _bins(confidence: np.ndarray) -> np.ndarray:
    return np.searchsorted(GRID, confidence, side="right") - 1


class Confidence:
    """From each row's top log-probability: its confidence bin (exp(top) in float64 on GRID) and whether it
    passes the global threshold; NaN or +inf is refused.

    float16 tops (the logit store's dtype) are looked up in tables over all 65,536 float16 bit patterns: the
    same answers as computing them, without an exp and a binary search per row."""

    KEPT, BAD = 1 << 8, 1 << 9  # flags beside the bin (0..100) in one int16 code

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    @staticmethod
    def _code(top: np.ndarray, threshold: float) -> np.ndarray:
        v = top.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            confidence = np.exp(v)
        return (
            _bins(confidence)
            | (confidence >= threshold) * Confidence.KEPT
            | (np.isnan(v) | np.isposinf(v)) * Confidence.BAD
        ).astype(np.int16)

    @staticmethod
    @functools.lru_cache(maxsize=8)
    def _table(threshold: float) -> np.ndarray:
        return Confidence._code(np.arange(1 << 16, dtype=np.uint16).view(np.float16), threshold)

    def __call__(self, top: np.ndarray, chunk: Chunk) -> tuple[np.ndarray, np.ndarray]:
        code = (
            self._table(self.threshold)[top.view(np.uint16)]
            if top.dtype == np.float16
            else self._code(top, self.threshold)
        )
        bins, kept, bad = code & 0xFF, (code & self.KEPT).astype(bool), code & self.BAD
        if bad.any():
            raise PseudoLabelError(
                f"teacher outputs contain NaN or +inf (rows {chunk.start}..{chunk.start + len(top) - 1})"
            )
        return bins, kept


@dataclass
class Tally:
    """Pass 1: per-class histograms of confidence (top probability at temperature 1) over the rows above the
    threshold."""

    num_classes: int
    threshold: float
    count: int = 0
    highest: float = 0.0
    predicted: np.ndarray = field(init=False)
    hist_all: np.ndarray = field(init=False)
    hist_kept: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.confidence = Confidence(self.threshold)
        self.predicted = np.zeros(self.num_classes, np.int64)
        self.hist_all = np.zeros(len(GRID), np.int64)
        self.hist_kept = np.zeros((self.num_classes, len(GRID)), np.int64)

    def counts(self, chunk: Chunk) -> Tally:
        """One chunk's counts alone; changes nothing here, so chunks can be counted in parallel and merged in any
        order."""
        part = Tally(self.num_classes, self.threshold)
        top, cls = chunk.top()
        bins, kept = part.confidence(top, chunk)
        part.count = len(top)
        part.highest = float(np.exp(np.float64(top.max()))) if len(top) else 0.0
        part.predicted = np.bincount(cls, minlength=self.num_classes)
        part.hist_all = np.bincount(bins, minlength=len(GRID))
        part.hist_kept = np.bincount(cls[kept] * len(GRID) + bins[kept], minlength=self.hist_kept.size).reshape(
            self.hist_kept.shape
        )
        return part

    def merge(self, other: Tally) -> None:
        self.count += other.count
        self.highest = max(self.highest, other.highest)
        self.predicted += other.predicted
        self.hist_all += other.hist_all
        self.hist_kept += other.hist_kept


def class_threshold(confidence: np.ndarray, n: int, floor: float) -> float:
    """Highest grid threshold >= floor with at least n images at or above it; `floor` when none has."""
    return _threshold_from_hist(np.bincount(_bins(confidence), minlength=len(GRID)), n, floor)


def _threshold_from_hist(hist: np.ndarray, n: int, floor: float) -> float:
    counts = np.cumsum(hist[::-1])[::-1]  # counts[j]: images with confidence >= GRID[j]
    enough = np.flatnonzero((GRID >= floor) & (counts >= n))
    return float(GRID[enough[-1]]) if len(enough) else floor


def _copies(k: int, n: int, upsample: bool, rng: np.random.Generator) -> np.ndarray:
    """Copies of each of k images so that they total exactly n: floor(n/k) each, plus one for n mod k of them at
    random."""
    if k == 0 or (k < n and not upsample):
        return np.ones(k, dtype=np.int64)
    copies = np.full(k, n // k, dtype=np.int64)
    copies[rng.choice(k, n % k, replace=False)] += 1
    return copies


@dataclass
class Plan:
    """What pass 1 decided: per class, the lowest confidence bin chosen and each chosen image's copies (in row
    order)."""

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
        chosen = int(tally.hist_kept[c, first_bin[c] :].sum())
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
        # images per 0.01 bin of top probability [GRID[j], GRID[j] + 0.01): all of them, and the balanced set
        # (pass 2 fills it)
        "confidence_histogram": {"all": tally.hist_all.tolist(), "after_balance": [0] * len(GRID)},
    }
    return Plan(first_bin, np.concatenate(copies), np.concatenate([[0], np.cumsum([len(c) for c in copies])]), stats)


@dataclass(frozen=True)
class Picked:
    """One chunk's pseudo-labels: rows (repeated once per copy) and sparse targets."""

    rows: np.ndarray  # int64
    target_indices: np.ndarray  # (n, w): int16 up to 32767 classes, else int32
    target_values: np.ndarray  # float32 (n, w), each row summing to 1


@dataclass(frozen=True)
class Chosen:
    """One chunk's images the plan keeps, with their targets, before copies are given (those need the chunks in
    order)."""

    start: int
    rows: np.ndarray  # within the chunk
    classes: np.ndarray
    bins: np.ndarray
    target_indices: np.ndarray
    target_values: np.ndarray


class Selector:
    """Pass 2: `choose` a chunk's images and their targets (any chunks, in parallel), then `finish` each with its
    copies (in row order)."""

    def __init__(self, plan: Plan, p: PseudoLabelParams, threshold: float) -> None:
        self.plan = plan
        self.p = p
        self.confidence = Confidence(threshold)
        self.seen = np.zeros(len(plan.first_bin), np.int64)  # chosen images of each class met so far
        self.index_dtype = np.int16 if len(plan.first_bin) <= np.iinfo(np.int16).max else np.int32

    def choose(self, chunk: Chunk) -> Chosen:
        top, cls = chunk.top()
        bins, kept = self.confidence(top, chunk)
        chosen = np.flatnonzero(kept & (bins >= self.plan.first_bin[cls]))
        if self.p.kind == "hard":
            indices, values = cls[chosen][:, None], np.ones((len(chosen), 1), np.float32)
        else:
            # softmax(v / T) of each chosen row, shifted by its top; stored top-k: the other classes' probability is 0
            # (np.take and einsum row sums: several times faster than fancy indexing and sum(axis=1) on short rows, and
            # unlike a matrix product with ones, each row's sum is the same whatever the chunk's size)
            values = np.take(chunk.values, chosen, axis=0).astype(np.float32)
            values -= np.take(top, chosen)[:, None]
            values /= self.p.temperature
            np.exp(values, out=values)
            values /= np.einsum("ij->i", values)[:, None]
            indices = (
                np.take(chunk.indices, chosen, axis=0)
                if chunk.indices is not None
                else np.broadcast_to(np.arange(values.shape[1]), values.shape)
            )
        return Chosen(
            chunk.start, chosen, cls[chosen], bins[chosen], np.ascontiguousarray(indices, self.index_dtype), values
        )

    def finish(self, chosen: Chosen) -> Picked:
        c = chosen.classes
        # each chosen image's place among its class's chosen images: counts before this chunk + rank within it
        # (stable sort of 16-bit keys is numpy's radix sort: several times faster than on int64)
        keys = c.astype(self.index_dtype)
        order = np.argsort(keys, kind="stable")
        rank = np.arange(len(c))
        first = np.ones(len(c), bool)  # where each class's run starts in sorted order
        first[1:] = keys[order][1:] != keys[order][:-1]
        place = np.empty(len(c), np.int64)
        place[order] = rank - np.maximum.accumulate(np.where(first, rank, 0))
        place += self.seen[c]
        self.seen += np.bincount(c, minlength=len(self.seen))
        copies = self.plan.copies[self.plan.offsets[c] + place]
        hist = self.plan.stats["confidence_histogram"]["after_balance"]
        hist[:] = np.add(hist, np.bincount(chosen.bins, weights=copies, minlength=len(GRID)).astype(np.int64)).tolist()

        def repeated(a: np.ndarray) -> np.ndarray:
            return np.repeat(a, copies, axis=0)

        return Picked(
            chosen.start + repeated(chosen.rows).astype(np.int64),
            repeated(chosen.target_indices),
            repeated(chosen.target_values),
        )


def two_passes(
    chunks: Callable[[], Iterable[Chunk]],
    p: PseudoLabelParams,
    seed: int,
    classes: tuple[str, ...],
    workers: int = 1,
) -> tuple[Plan, Iterator[Picked]]:
    """Read `chunks()` (in row order) once to plan, and again, lazily, to pick: (the plan, each chunk's pseudo-labels).
    The result is the same for any number of `workers` threads.

    The plan's after-balance histogram is complete once the picks have all been taken."""
    tally = Tally(len(classes), p.threshold)
    for part in ordered_map(tally.counts, chunks(), workers):
        tally.merge(part)
    decided = plan(tally, p, seed, classes)
    selector = Selector(decided, p, p.threshold)
    return decided, (selector.finish(chosen) for chosen in ordered_map(selector.choose, chunks(), workers))


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
