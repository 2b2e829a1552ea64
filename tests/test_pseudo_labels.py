"""Filter/balance arithmetic on hand-made teacher outputs."""

import numpy as np
import pytest

from selftrain.params import PseudoLabelParams
from selftrain.pseudo_labels import (
    GRID,
    Chunk,
    Confidence,
    PseudoLabelError,
    class_threshold,
    dense,
    select,
    two_passes,
)

CLASSES = ("a", "b", "c")


def log_probs_for(conf_and_class: list[tuple[float, int]]) -> np.ndarray:
    """Rows whose top probability is `conf` at `cls`, the rest spread evenly over the other classes."""
    rows = []
    for conf, cls in conf_and_class:
        p = np.full(len(CLASSES), (1 - conf) / (len(CLASSES) - 1))
        p[cls] = conf
        rows.append(np.log(p))
    return np.array(rows)


def params(**kw) -> PseudoLabelParams:
    return PseudoLabelParams(**{"per_class": None, **kw})


def test_threshold_drops_low_confidence_and_keeps_the_rest_once():
    lp = log_probs_for([(0.9, 0), (0.4, 0), (0.6, 1), (0.34, 2), (0.5, 2)])
    sel = select(lp, params(threshold=0.5), seed=0, classes=CLASSES)
    assert sorted(sel.rows.tolist()) == [0, 2, 4]  # 0.5 is kept: the threshold is inclusive
    assert sel.stats["total"] == {"unlabeled": 5, "above_threshold": 3, "after_balance": 3, "unique_after_balance": 3}


def test_soft_targets_are_teacher_probabilities_and_hard_targets_one_hot():
    lp = log_probs_for([(0.7, 1)])
    soft = select(lp, params(kind="soft", threshold=0.0), 0, CLASSES).targets
    hard = select(lp, params(kind="hard", threshold=0.0), 0, CLASSES).targets
    np.testing.assert_allclose(soft[0], [0.15, 0.7, 0.15], atol=1e-6)
    np.testing.assert_array_equal(hard[0], [0, 1, 0])


def test_temperature_sharpens_soft_targets_but_not_the_confidence_filter():
    lp = log_probs_for([(0.6, 0)])
    sharp = select(lp, params(threshold=0.55, temperature=0.5), 0, CLASSES)
    assert len(sharp.rows) == 1  # confidence is judged at temperature 1
    expected = np.array([0.6, 0.2, 0.2]) ** 2 / np.sum(np.array([0.6, 0.2, 0.2]) ** 2)
    np.testing.assert_allclose(sharp.targets[0], expected, atol=1e-6)


def test_class_threshold_picks_highest_grid_value_with_enough_images():
    conf = np.array([0.95, 0.93, 0.91, 0.80, 0.62])
    assert class_threshold(conf, 3, floor=0.5) == 0.91
    assert class_threshold(conf, 4, floor=0.5) == 0.80
    assert class_threshold(conf, 10, floor=0.5) == 0.5  # too few: fall back to the global threshold
    assert class_threshold(conf, 1, floor=0.99) == 0.99


def test_balance_subsamples_full_classes_and_duplicates_short_ones_to_exactly_n():
    # class 0: 40 images at distinct confidences, class 1: 4 images, class 2: 10 images
    rows = [(0.50 + 0.01 * i, 0) for i in range(40)] + [(0.8, 1)] * 4 + [(0.7, 2)] * 10
    sel = select(log_probs_for(rows), params(threshold=0.5, per_class=10), seed=1, classes=CLASSES)
    pc = sel.stats["per_class"]
    # class 0: highest grid threshold with >= 10 images is 0.80 (0.80..0.89) -> exactly 10 selected, 1 copy each
    assert pc["a"]["class_threshold"] == 0.8 and pc["a"]["selected"] == 10 and pc["a"]["after_balance"] == 10
    assert set(sel.rows[sel.rows < 40].tolist()) == set(range(30, 40))
    # class 1: 4 images, 10/4 = 2.5 copies -> each gets 2 or 3
    copies = np.bincount(sel.rows, minlength=54)[40:44]
    assert set(copies.tolist()) <= {2, 3} and pc["b"]["selected"] == 4
    # class 2: exactly 10 -> one copy each
    assert np.bincount(sel.rows, minlength=54)[44:].tolist() == [1] * 10


def test_balance_gives_every_class_exactly_n_on_a_skewed_input():
    # 3, 7 and 50 images: duplicated up, untouched, subsampled down, each to exactly 7
    rows = [(0.9, 0)] * 3 + [(0.9, 1)] * 7 + [(0.95, 2)] * 50
    lp = log_probs_for(rows)
    picks_of_a = []
    for s in range(50):
        sel = select(lp, params(per_class=7), seed=s, classes=CLASSES)
        assert [v["after_balance"] for v in sel.stats["per_class"].values()] == [7, 7, 7]
        assert np.bincount(sel.rows, minlength=60)[:3].tolist() in ([3, 2, 2], [2, 3, 2], [2, 2, 3])
        picks_of_a.append(tuple(np.bincount(sel.rows, minlength=60)[:3]))
    assert len(set(picks_of_a)) == 3  # which image gets the extra copy is random, by seed
    a = select(lp, params(per_class=7), seed=5, classes=CLASSES).rows
    b = select(lp, params(per_class=7), seed=5, classes=CLASSES).rows
    np.testing.assert_array_equal(a, b)


def test_no_upsample_caps_copies_at_one():
    rows = [(0.9, 0)] * 2 + [(0.9, 1)] * 8
    sel = select(log_probs_for(rows), params(per_class=5, upsample=False), 0, CLASSES)
    assert sel.stats["per_class"]["a"]["after_balance"] == 2


def test_median_target_uses_the_kept_class_counts():
    rows = [(0.9, 0)] * 2 + [(0.9, 1)] * 6 + [(0.9, 2)] * 20
    sel = select(log_probs_for(rows), params(per_class="median"), 0, CLASSES)
    assert sel.stats["per_class_target"] == 6


def test_soft_labels_survive_balancing_with_full_probability_vectors():
    rows = [(0.6, 0)] + [(0.9, 1)] * 3
    sel = select(log_probs_for(rows), params(per_class=3, threshold=0.5), 0, CLASSES)
    dup = sel.targets[sel.rows == 0]
    assert len(dup) == 3
    np.testing.assert_allclose(dup, [[0.6, 0.2, 0.2]] * 3, atol=1e-6)


def test_nothing_above_threshold_says_what_to_change():
    with pytest.raises(PseudoLabelError, match="pseudo_labels.threshold = 0.9.*highest is 0.500"):
        select(log_probs_for([(0.5, 0)]), params(threshold=0.9), 0, CLASSES)


def test_nan_and_shape_errors():
    lp = log_probs_for([(0.9, 0)])
    lp[0, 1] = np.nan
    with pytest.raises(PseudoLabelError, match="NaN"):
        select(lp, params(), 0, CLASSES)
    with pytest.raises(PseudoLabelError, match="expected \\(N, 3\\)"):
        select(np.zeros((2, 4)), params(), 0, CLASSES)
    with pytest.raises(PseudoLabelError, match="empty"):
        select(np.zeros((0, 3)), params(), 0, CLASSES)


def test_hard_labels_are_one_hot_and_a_confidence_histogram_is_kept():
    rows = [(0.62, 0)] * 2 + [(0.91, 1)] * 2 + [(0.4, 2)]
    sel = select(log_probs_for(rows), params(kind="hard", threshold=0.5, per_class=2), 0, CLASSES)
    np.testing.assert_array_equal(sel.targets, np.eye(3)[[0, 0, 1, 1]])
    hist = sel.stats["confidence_histogram"]
    assert hist["all"][62] == 2 and hist["all"][91] == 2 and hist["all"][40] == 1 and sum(hist["all"]) == 5
    assert sum(hist["after_balance"]) == 4 and hist["after_balance"][40] == 0


@pytest.mark.parametrize("kind", ["soft", "hard"])
@pytest.mark.parametrize("per_class", ["median", 30, None])
def test_two_passes_over_chunks_give_exactly_the_in_memory_selection(kind, per_class):
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(500, 5)) * rng.uniform(0.5, 4, size=(500, 1))
    lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    classes = tuple("abcde")
    p = PseudoLabelParams(kind=kind, per_class=per_class, threshold=0.3, temperature=0.7)
    whole = select(lp, p, seed=3, classes=classes)
    for size, workers in (
        (1, 1),
        (37, 1),
        (37, 3),
        (499, 2),
    ):  # chunk edges anywhere, down to one row; chunks on threads
        plan, picks = two_passes(
            lambda: (Chunk(i, lp[i : i + size]) for i in range(0, 500, size)), p, 3, classes, workers
        )
        picks = list(picks)
        rows = np.concatenate([q.rows for q in picks])
        targets = np.concatenate([dense(q.target_indices, q.target_values, 5) for q in picks])
        assert np.array_equal(rows, whole.rows) and np.array_equal(targets, whole.targets), size
        assert plan.stats == whole.stats
    assert np.all(np.diff(whole.rows) >= 0)  # row order, each row's copies together


def test_a_top_k_store_gives_the_dense_result_on_the_classes_it_keeps():
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(200, 6)) * 3
    lp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    values, indices = np.sort(lp, axis=1)[:, ::-1][:, :2], np.argsort(-lp, axis=1)[:, :2]
    classes = tuple("abcdef")
    p = PseudoLabelParams(per_class="median", threshold=0.4)
    topk_plan, picks = two_passes(lambda: [Chunk(0, values, indices)], p, 0, classes)
    [picked] = list(picks)
    known = np.zeros(lp.shape, bool)
    np.put_along_axis(known, indices, True, axis=1)
    full = np.where(known, lp, -np.inf)  # what the top-2 store knows, densified
    ref = select(full, p, 0, classes)
    assert np.array_equal(picked.rows, ref.rows)
    np.testing.assert_allclose(dense(picked.target_indices, picked.target_values, 6), ref.targets, atol=1e-6)
    assert picked.target_indices.shape[1] == 2 and topk_plan.stats["total"] == ref.stats["total"]


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.555, 0.9])
def test_float16_tops_from_the_tables_match_the_computed_bins_and_threshold(threshold):
    # every float16 log-probability from 0 down to -12, bin edges included, and a few random ones
    top = np.concatenate(
        [
            np.log(GRID[1:]),
            -np.abs(np.random.default_rng(0).normal(size=5000)) * 4,
            np.arange(0x8000, 0xCA00, dtype=np.uint16).view(np.float16).astype(np.float64),
        ]
    ).astype(np.float16)
    confidence = Confidence(threshold)
    chunk = Chunk(0, top[:, None])
    bins, kept = confidence(top, chunk)
    ref_bins, ref_kept = confidence(top.astype(np.float64), chunk)
    assert np.array_equal(bins, ref_bins) and np.array_equal(kept, ref_kept)
    assert kept.any() and (threshold == 0.0 or not kept.all())
    with pytest.raises(PseudoLabelError, match=r"NaN or \+inf \(rows 7\.\.8\)"):
        confidence(np.array([np.nan, -1.0], np.float16), Chunk(7, np.zeros((2, 1))))
