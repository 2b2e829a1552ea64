"""-C and -P metrics on hand-made numbers: every expected value below is worked out by hand."""

import math

import numpy as np
import pytest

from selftrain.robustness import metrics


def test_corruption_error_and_relative_mce():
    errors = {"fog": [0.1, 0.2, 0.3, 0.4, 0.5], "contrast": [0.2, 0.2, 0.2, 0.2, 0.2]}
    ref = {"fog": [0.2, 0.4, 0.6, 0.8, 1.0], "contrast": [0.1, 0.1, 0.1, 0.1, 0.5]}
    ce = metrics.corruption_errors(errors, ref)
    assert ce["fog"] == pytest.approx(1.5 / 3.0)
    assert ce["contrast"] == pytest.approx(1.0 / 0.9)
    assert metrics.mean(ce) == pytest.approx((0.5 + 1.0 / 0.9) / 2)
    # relative: subtract clean error 0.1 (model) and 0.05 (reference) per severity
    rel = metrics.relative_corruption_errors(errors, 0.1, ref, 0.05)
    assert rel["fog"] == pytest.approx((1.5 - 0.5) / (3.0 - 0.25))
    assert rel["contrast"] == pytest.approx((1.0 - 0.5) / (0.9 - 0.25))


def test_reference_without_error_gives_nan_not_a_crash():
    ce = metrics.corruption_errors({"fog": [0.1] * 5}, {"fog": [0.0] * 5})
    assert math.isnan(ce["fog"])
    assert metrics.mean({"fog": float("nan"), "snow": 0.5}) == 0.5


def test_flip_probability_consecutive_and_noise():
    preds = np.array([[0, 0, 1, 1, 0], [2, 2, 2, 2, 2]])
    # consecutive: sequence 1 flips at frames 2 and 4 (2 of 4 pairs), sequence 2 never: 2 / 8
    assert metrics.flip_probability(preds, noise=False) == pytest.approx(2 / 8)
    # against the first frame: sequence 1 differs at frames 2 and 3 (2 of 4), sequence 2 never
    assert metrics.flip_probability(np.array([[0, 0, 1, 1, 0]]), noise=True) == pytest.approx(2 / 4)
    assert metrics.flip_probability(np.array([[0, 1, 0, 1]]), noise=False) == 1.0
    assert metrics.flip_probability(np.array([[0, 1, 0, 1]]), noise=True) == pytest.approx(2 / 3)


def test_constant_model_has_zero_flip_probability_and_t5d():
    logits = np.tile(np.arange(10.0), (3, 12, 1))  # 3 sequences of 12 frames, the same logits everywhere
    preds = logits.argmax(-1)
    top5 = np.argsort(-logits, axis=-1)[..., :5]
    for noise in (False, True):
        assert metrics.flip_probability(preds, noise) == 0.0
        assert metrics.top5_distance(top5, noise) == 0.0


def test_top5_distance_by_hand():
    # frame 0 ranks classes 0,1,2,3,4 first; frame 1 swaps 0 and 1: both move one place -> 2
    # frame 2 drops class 4 for class 9: class 4 moves from place 4 to "5" -> 1 (against frame 1)
    # frame 3 reverses frame 2's top 5 (1,0,2,3,9 -> 9,3,2,0,1): moves 4+2+0+2+4 = 12
    seq = np.array([[0, 1, 2, 3, 4], [1, 0, 2, 3, 4], [1, 0, 2, 3, 9], [9, 3, 2, 0, 1]])
    assert metrics.top5_distance(seq[None], noise=False) == pytest.approx((2 + 1 + 12) / 3)
    # against the first frame: frame 1 -> 2; frame 2 -> 0,1 swapped (2) + 4 out (1) = 3;
    # frame 3 (9,3,2,0,1): class 0 at 3 (3), 1 at 4 (3), 2 at 2 (0), 3 at 1 (2), 4 out (1) = 9
    assert metrics.top5_distance(seq[None], noise=True) == pytest.approx((2 + 3 + 9) / 3)


def test_shapes_are_checked():
    with pytest.raises(ValueError, match="frames >= 2"):
        metrics.flip_probability(np.zeros((3, 1), dtype=int), noise=False)
    with pytest.raises(ValueError, match="top5 must be"):
        metrics.top5_distance(np.zeros((3, 4, 3), dtype=int), noise=False)


def test_a_kind_the_reference_never_gets_wrong_is_named_not_silently_dropped(caplog):
    from selftrain.rendering import generation_table
    from selftrain.robustness.evaluation import summarize

    def raw(fog, snow, zoom, shot):
        return {
            "clean_error": 0.1,
            "corruption_errors": {"fog": [fog] * 5, "snow": [snow] * 5},
            "flip_probability": {"zoom": zoom, "shot_noise": shot},
            "top5_distance": {},
        }

    ref = raw(0.0, 0.4, 0.2, 0.0)  # no error under fog, no flip under shot noise: nothing to normalise by
    with caplog.at_level("WARNING", logger="selftrain"):
        s = summarize(raw(0.2, 0.2, 0.1, 0.05), ref)
    assert s["headline"]["mCE"] == pytest.approx(0.5) and s["headline"]["mFR"] == pytest.approx(
        0.5
    )  # over the defined kinds
    assert s["left_out"] == {"mCE": ["fog"], "relative_mCE": ["fog"], "mFR": ["shot_noise"]}
    assert "mFR leaves out shot_noise: the robustness reference made no flip there" in caplog.text
    assert "mCE leaves out fog" in caplog.text
    metrics = {role: {"val_top1": 0.5, **s["headline"], "robustness": s} for role in ("teacher", "student")}
    metrics["robustness_reference"] = {"name": "gen0", "checkpoint": "x", "sha256": "0" * 64}
    assert (
        "student mFR leaves out shot_noise: the reference made no flip there, so it is undefined"
        in generation_table(metrics)
    )
    assert summarize(raw(0.2, 0.2, 0.1, 0.05), raw(0.3, 0.4, 0.2, 0.1))["left_out"] == {}
