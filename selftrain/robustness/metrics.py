"""Robustness metrics of ImageNet-C and -P (Hendrycks & Dietterich 2019), normalised by a reference model.

-C: corruption error CE_c = sum_s E_{s,c}(f) / sum_s E_{s,c}(ref); mCE = mean_c CE_c; relative CE subtracts
each model's clean error first. -P: flip probability FP over perturbation sequences; FR = FP(f) / FP(ref);
top-5 distance T5D. The reference stands in for -C's AlexNet, which has no small-image counterpart.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# -P sequences whose frames are independent noise draws compare every frame with the first;
# the others (gradual transforms) compare consecutive frames.
NOISE_SEQUENCES = ("gaussian_noise", "shot_noise")


def corruption_errors(errors: Mapping[str, list[float]], ref_errors: Mapping[str, list[float]]) -> dict[str, float]:
    """CE per corruption: summed error over severities, divided by the reference's."""
    out = {}
    for name, errs in errors.items():
        ref = sum(ref_errors[name])
        out[name] = sum(errs) / ref if ref > 0 else float("nan")
    return out


def relative_corruption_errors(
    errors: Mapping[str, list[float]], clean_error: float, ref_errors: Mapping[str, list[float]], ref_clean_error: float
) -> dict[str, float]:
    """Relative CE per corruption: sum_s (E_{s,c} - E_clean), divided by the same for the reference."""
    out = {}
    for name, errs in errors.items():
        ref = sum(e - ref_clean_error for e in ref_errors[name])
        out[name] = sum(e - clean_error for e in errs) / ref if ref > 0 else float("nan")
    return out


def mean(values: Mapping[str, float]) -> float:
    """Mean over the corruptions / perturbations whose value is defined (NaN where the reference made no error or
    no flip: nothing to normalise by). `undefined` names the ones left out: report them, do not hide them."""
    vals = np.array(list(values.values()), dtype=np.float64)
    return float(np.nanmean(vals)) if len(vals) and not np.isnan(vals).all() else float("nan")


def undefined(values: Mapping[str, float]) -> list[str]:
    """The corruptions / perturbations that `mean` leaves out (a reference CE or FP of 0)."""
    return [name for name, v in values.items() if np.isnan(v)]


def flip_probability(predictions: np.ndarray, noise: bool) -> float:
    """FP of top-1 predictions (m sequences, n frames): share of frames whose prediction differs from the
    previous frame's (or, for noise sequences, from the first frame's)."""
    if predictions.ndim != 2 or predictions.shape[1] < 2:
        raise ValueError(f"predictions must be (sequences, frames >= 2), got {predictions.shape}")
    before = predictions[:, :1] if noise else predictions[:, :-1]
    return float((predictions[:, 1:] != before).mean())


def _top5_distance(before: np.ndarray, after: np.ndarray) -> int:
    """-P's top-5 distance: for each class of `before`'s top 5 (position k), how far it moved, its new
    position capped at 5 (a class that left the top 5 counts as position 5)."""
    position = {int(c): i for i, c in enumerate(after[:5])}
    return sum(abs(k - position.get(int(c), 5)) for k, c in enumerate(before[:5]))


def top5_distance(top5: np.ndarray, noise: bool) -> float:
    """Mean T5D of (m sequences, n frames, >= 5) class lists ordered by score, frames paired as for FP."""
    if top5.ndim != 3 or top5.shape[1] < 2 or top5.shape[2] < 5:
        raise ValueError(f"top5 must be (sequences, frames >= 2, k), got {top5.shape}")
    m, n, _ = top5.shape
    total = 0
    for i in range(m):
        for j in range(1, n):
            total += _top5_distance(top5[i, 0 if noise else j - 1], top5[i, j])
    return total / (m * (n - 1))
