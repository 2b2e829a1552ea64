"""Consistency training's threshold rules, distribution alignment and losses, on numbers worked by hand."""

import math

import pytest
import torch

from selftrain.methods.fixmatch.thresholds import (
    DistributionAlignment,
    FixedThreshold,
    FlexMatchThreshold,
    FreeMatchThreshold,
    fairness_loss,
    masked_ce,
    pseudo_targets,
)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def rows(*r):
    return torch.tensor(r)


def test_fixed_threshold_keeps_the_images_at_or_above_tau():
    assert FixedThreshold(0.95).mask(t([0.96, 0.04], [0.6, 0.4], [0.95, 0.05]), rows(0, 1, 2)).tolist() == [1, 0, 1]


def test_flexmatch_thresholds_start_at_zero_and_rise_with_each_class_learning_effect():
    rule = FlexMatchThreshold(tau=0.8, n_unlabeled=4, classes=3)
    # nothing claimed yet: beta = 0/4 for every class, so M(0) * tau = 0 and every image counts
    assert rule.thresholds().tolist() == [0, 0, 0]
    assert rule.mask(t([0.9, 0.05, 0.05], [0.3, 0.4, 0.3]), rows(0, 1)).tolist() == [1, 1]
    assert rule.selected.tolist() == [0, -1, -1, -1]  # only row 0 reached tau
    # sigma = [1, 0, 0], unused 3: beta = [1/3, 0, 0]; class 0's threshold 0.8 * (1/3) / (5/3) = 0.16
    assert rule.thresholds() == pytest.approx(torch.tensor([0.16, 0, 0]))
    assert rule.mask(t([0.85, 0.1, 0.05], [0.1, 0.85, 0.05]), rows(1, 2)).tolist() == [1, 1]
    assert rule.selected.tolist() == [0, 0, 1, -1]
    # sigma = [2, 1, 0], unused 1: beta = [1, 1/2, 0]; thresholds 0.8 * 1 / 1, 0.8 * 0.5 / 1.5, 0
    assert rule.thresholds() == pytest.approx(torch.tensor([0.8, 0.8 / 3, 0]))
    assert rule.mask(t([0.7, 0.2, 0.1], [0.3, 0.6, 0.1]), rows(3, 0)).tolist() == [0, 1]  # 0.7 < 0.8; 0.6 >= 0.267
    assert rule.selected.tolist() == [0, 0, 1, -1]  # neither reached tau: the record stands


def test_flexmatch_masks_a_batch_by_the_counts_before_it():
    rule = FlexMatchThreshold(tau=0.8, n_unlabeled=2, classes=2)
    # row 0's claim would raise class 0's threshold to 0.8 and mask row 1 (0.6), but it counts from the next batch
    assert rule.mask(t([0.9, 0.1], [0.6, 0.4]), rows(0, 1)).tolist() == [1, 1]
    assert rule.thresholds().tolist() == pytest.approx([0.8, 0])


def test_flexmatch_without_warmup_normalises_by_the_most_claimed_class_only():
    rule = FlexMatchThreshold(tau=0.8, n_unlabeled=10, classes=2, warmup=False)
    rule.mask(t([0.9, 0.1], [0.9, 0.1], [0.1, 0.9]), rows(0, 1, 2))
    # sigma = [2, 1]: beta = [1, 1/2] although 7 images are unused (with warm-up: [2/7, 1/7])
    assert rule.beta() == pytest.approx(torch.tensor([1.0, 0.5]))
    warm = FlexMatchThreshold(tau=0.8, n_unlabeled=10, classes=2)
    warm.mask(t([0.9, 0.1], [0.9, 0.1], [0.1, 0.9]), rows(0, 1, 2))
    assert warm.beta() == pytest.approx(torch.tensor([2 / 7, 1 / 7]))


def test_freematch_updates_its_emas_with_the_batch_then_masks_by_the_scaled_global_threshold():
    rule = FreeMatchThreshold(classes=3, momentum=0.5)
    # tau_0 = p~_0 = h~_0 = 1/C, as the paper and USB start them (at C = 3, 1/C differs from 0.5 and from 1)
    assert rule.tau_t.item() == pytest.approx(1 / 3) and rule.p_model.tolist() == pytest.approx([1 / 3] * 3)
    batch = t([0.7, 0.2, 0.1], [0.45, 0.35, 0.2], [0.2, 0.2, 0.6])
    # mean max p 0.5833: tau = 0.5/3 + 0.5*0.5833 = 0.4583; mean p [0.45, 0.25, 0.3]: p~ = [0.3917, 0.2917, 0.3167];
    # thresholds tau * p~ / max p~ = [0.4583, 0.3413, 0.3706]: row 1 (0.45, class 0) misses by a hair
    assert rule.mask(batch, rows(0, 1, 2)).tolist() == [1, 0, 1]
    tau, p_model = 1 / 6 + 0.5 * 0.7 / 1.2, [1 / 6 + 0.225, 1 / 6 + 0.125, 1 / 6 + 0.15]
    assert rule.tau_t.item() == pytest.approx(tau)
    assert rule.p_model.tolist() == pytest.approx(p_model)
    assert rule.thresholds().tolist() == pytest.approx([tau * p / max(p_model) for p in p_model])
    assert rule.hist.tolist() == pytest.approx([1 / 6 + 1 / 3, 1 / 6, 1 / 6 + 1 / 6])  # predicted classes 0, 0, 2
    # a second batch in a rule restored from the first's state (a resumed run) continues the same EMAs:
    # mean max p 0.5167: tau = 0.5*0.4583 + 0.5*0.5167 = 0.4875; mean p [0.25, 0.5167, 0.2333]:
    # p~ = [0.3208, 0.4042, 0.275]; class 1 is the largest now, its threshold 0.4875: 0.5 passes, 0.45 misses
    resumed = FreeMatchThreshold(classes=3, momentum=0.5)
    resumed.load_state_dict(rule.state_dict())
    assert resumed.mask(t([0.3, 0.5, 0.2], [0.2, 0.45, 0.35], [0.25, 0.6, 0.15]), rows(3, 4, 5)).tolist() == [1, 0, 1]
    tau2 = 0.5 * tau + 0.5 * 1.55 / 3
    p2 = [0.5 * p + 0.5 * m for p, m in zip(p_model, [0.25, 1.55 / 3, 0.7 / 3])]
    assert resumed.tau_t.item() == pytest.approx(tau2)
    assert resumed.thresholds().tolist() == pytest.approx([tau2 * p / max(p2) for p in p2])


def test_distribution_alignment_scales_by_prior_over_the_running_mean():
    align = DistributionAlignment(torch.tensor([1.0, 1.0]), momentum=0.5)
    # first batch: p~ = its mean [0.7, 0.3]; q * [0.5/0.7, 0.5/0.3], normalised: 24/38 and 18/46 (to the 1e-6 eps)
    q = align(t([0.8, 0.2], [0.6, 0.4]))
    assert q[:, 0].tolist() == pytest.approx([24 / 38, 18 / 46], rel=1e-5)
    assert q.sum(1).tolist() == pytest.approx([1, 1])
    # p~ = 0.5 * [0.7, 0.3] + 0.5 * [0.5, 0.5] = [0.6, 0.4]: a uniform prediction is pushed to [0.4, 0.6]
    assert align(t([0.5, 0.5], [0.5, 0.5]))[0].tolist() == pytest.approx([0.4, 0.6], rel=1e-5)


def test_fairness_loss_on_a_worked_batch_and_zero_when_nothing_passes():
    rule = FreeMatchThreshold(classes=3, momentum=0.5)
    rule.mask(t([0.7, 0.2, 0.1], [0.45, 0.35, 0.2], [0.2, 0.2, 0.6]), rows(0, 1, 2))
    # p~ = [0.3917, 0.2917, 0.3167], h~ = [0.5, 0.1667, 0.3333], neither uniform: target SumNorm(p~ / h~)
    target = [p / h for p, h in zip(rule.p_model.tolist(), rule.hist.tolist())]
    target = [x / sum(target) for x in target]
    assert target == pytest.approx([0.2249, 0.5024, 0.2727], abs=1e-4)
    # strong views predicting classes 0, 0, 1, 2: hbar = [0.5, 0.25, 0.25], pbar = [0.35, 0.35, 0.3];
    # SumNorm(pbar / hbar) = [0.7, 1.4, 1.2] / 3.3
    strong = torch.log(t([0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]))
    mean = [0.7 / 3.3, 1.4 / 3.3, 1.2 / 3.3]
    loss = fairness_loss(strong, torch.ones(4), rule)
    assert loss.item() == pytest.approx(sum(a * math.log(b) for a, b in zip(target, mean)), rel=1e-5)
    # the mask selects the rows: only the last two count (hbar = [0, 0.5, 0.5]: class 0 drops out, as in USB)
    loss = fairness_loss(strong, torch.tensor([0.0, 0.0, 1.0, 1.0]), rule)
    mean = [0.0, 0.35 / 0.5, 0.5 / 0.5]
    mean = [x / sum(mean) for x in mean]
    assert loss.item() == pytest.approx(sum(a * math.log(b + 1e-12) for a, b in zip(target, mean)), rel=1e-5)
    assert fairness_loss(strong, torch.zeros(4), rule).item() == 0


def test_a_class_whose_mean_probability_underflows_leaves_alignment_finite():
    """USB adds 1e-6 to the prior and the running mean: without it, p~(c) = 0 makes prior / p~ infinite and every
    aligned row NaN (0 * inf)."""
    align = DistributionAlignment(torch.tensor([1.0, 1.0, 1.0]), momentum=0.5)
    q = align(t([0.6, 0.4, 0.0], [0.5, 0.5, 0.0]))
    assert torch.isfinite(q).all() and q.sum(1).tolist() == pytest.approx([1, 1])
    assert q[:, 2].tolist() == [0, 0]


def test_a_non_finite_batch_leaves_the_running_state_as_it_was():
    """One NaN batch would otherwise stay in the EMAs for good: FreeMatch's mask would be 0 from then on."""
    nan = t([float("nan"), 0.5, 0.5], [0.2, 0.3, 0.5])
    rule = FreeMatchThreshold(classes=3, momentum=0.5)
    rule.mask(t([0.7, 0.2, 0.1], [0.2, 0.2, 0.6]), rows(0, 1))
    before = {k: v.clone() for k, v in rule.state_dict().items()}
    assert rule.mask(nan, rows(2, 3)).tolist() == [0, 1]  # the finite row still gets its mask
    assert all(torch.equal(before[k], v) for k, v in rule.state_dict().items())
    assert rule.mask(t([0.9, 0.05, 0.05]), rows(4)).tolist() == [1]  # and later batches mask as before
    align = DistributionAlignment(torch.ones(3), momentum=0.5)
    align(t([0.6, 0.3, 0.1]))
    p_model = align.p_model.clone()
    align(nan)
    assert torch.equal(align.p_model, p_model)
    fresh = DistributionAlignment(torch.ones(3), momentum=0.5)
    fresh(nan)
    assert fresh.p_model is None  # nothing finite seen yet


def test_no_gradient_flows_through_the_weak_view_and_the_loss_is_the_batch_mean_of_masked_ce():
    weak = torch.tensor([[4.0, 0.0], [0.2, 0.0]], requires_grad=True)  # confident class 0; unsure
    strong = torch.tensor([[1.0, 0.0], [0.0, 3.0]], requires_grad=True)
    targets, mask, probs = pseudo_targets(weak, rows(0, 1), FixedThreshold(0.95), None)
    assert targets.tolist() == [0, 0] and mask.tolist() == [1, 0] and not probs.requires_grad
    loss = masked_ce(strong, targets, mask)
    # only image 0 counts, divided by the whole batch (2): CE = log(1 + e^-1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)) / 2)
    g_weak, g_strong = torch.autograd.grad(loss, [weak, strong], allow_unused=True)
    assert g_weak is None
    assert g_strong[1].abs().sum() == 0 and g_strong[0].abs().sum() > 0  # the masked image gives no gradient
    # with the weak view sharpened (temperature 0.5) image 1 is still under tau; with alignment its target may change
    _, mask2, _ = pseudo_targets(weak, rows(0, 1), FixedThreshold(0.95), None, temperature=0.5)
    assert mask2.tolist() == [1, 0]
