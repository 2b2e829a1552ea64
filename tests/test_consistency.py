"""Consistency training's threshold rules, distribution alignment and losses, on numbers worked by hand."""

import math

import pytest
import torch

from selftrain.consistency import (
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
    rule = FreeMatchThreshold(classes=2, momentum=0.5)
    assert rule.tau_t.item() == 0.5 and rule.p_model.tolist() == [0.5, 0.5]  # 1/C, as the paper starts them
    # mean max p 0.75: tau = 0.5*0.5 + 0.5*0.75 = 0.625; p~ = [0.625, 0.375]; thresholds 0.625 * [1, 0.6]
    assert rule.mask(t([0.9, 0.1], [0.6, 0.4]), rows(0, 1)).tolist() == [1, 0]
    assert rule.tau_t.item() == pytest.approx(0.625)
    assert rule.thresholds() == pytest.approx(torch.tensor([0.625, 0.375]))
    assert rule.hist.tolist() == pytest.approx([0.75, 0.25])  # both predicted class 0
    # tau = 0.5*0.625 + 0.5*0.75 = 0.6875; p~ = [0.5875, 0.4125]; class 1: 0.6875 * 0.4125 / 0.5875 = 0.4827
    assert rule.mask(t([0.3, 0.7], [0.8, 0.2]), rows(2, 3)).tolist() == [1, 1]
    assert rule.thresholds() == pytest.approx(torch.tensor([0.6875, 0.6875 * 0.4125 / 0.5875]))
    # a second batch after the first, in a rule restored from the first's state (a resumed run):
    # mean max p 0.67: tau = 0.5*0.625 + 0.5*0.67 = 0.6475; p~ = 0.5*[0.625, 0.375] + 0.5*[0.37, 0.63] = [0.4975, 0.5025];
    # class 0's threshold 0.6475 * 0.4975/0.5025 = 0.641 > 0.54, class 1's 0.6475 <= 0.8
    first = FreeMatchThreshold(classes=2, momentum=0.5)
    first.mask(t([0.9, 0.1], [0.6, 0.4]), rows(0, 1))
    resumed = FreeMatchThreshold(classes=2, momentum=0.5)
    resumed.load_state_dict(first.state_dict())
    assert resumed.mask(t([0.54, 0.46], [0.2, 0.8]), rows(2, 3)).tolist() == [0, 1]
    assert resumed.thresholds() == pytest.approx(torch.tensor([0.6475 * 0.4975 / 0.5025, 0.6475]))


def test_distribution_alignment_scales_by_prior_over_the_running_mean():
    align = DistributionAlignment(torch.tensor([1.0, 1.0]), momentum=0.5)
    # first batch: p~ = its mean [0.7, 0.3]; q * [0.5/0.7, 0.5/0.3], normalised: 24/38 and 18/46
    q = align(t([0.8, 0.2], [0.6, 0.4]))
    assert q[:, 0].tolist() == pytest.approx([24 / 38, 18 / 46])
    assert q.sum(1).tolist() == pytest.approx([1, 1])
    # p~ = 0.5 * [0.7, 0.3] + 0.5 * [0.5, 0.5] = [0.6, 0.4]: a uniform prediction is pushed to [0.4, 0.6]
    assert align(t([0.5, 0.5], [0.5, 0.5]))[0].tolist() == pytest.approx([0.4, 0.6])


def test_fairness_loss_on_a_worked_batch_and_zero_when_nothing_passes():
    rule = FreeMatchThreshold(classes=2)  # p~ = h~ = [0.5, 0.5]: the target is uniform
    logits = torch.log(t([0.8, 0.2], [0.3, 0.7]))  # predicted classes 0 and 1: hbar uniform, pbar = [0.55, 0.45]
    loss = fairness_loss(logits, torch.tensor([1.0, 1.0]), rule)
    assert loss.item() == pytest.approx(0.5 * math.log(0.55) + 0.5 * math.log(0.45), rel=1e-5)
    assert fairness_loss(logits, torch.tensor([0.0, 0.0]), rule).item() == 0


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
