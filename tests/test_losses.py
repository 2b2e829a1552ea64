"""The distillation losses against hand-worked values and the properties their papers state."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selftrain.methods.distill.losses import build_loss, dist_term, inter_class_relation, intra_class_relation, kd_term


def test_kd_is_tau_squared_kl_on_a_worked_example():
    tau = 2.0
    teacher = torch.tensor([[0.0, 2 * math.log(3)]])  # softmax(teacher / 2) = [1/4, 3/4]
    student = torch.zeros(1, 2)  # [1/2, 1/2]
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert kd_term(student, teacher, tau).item() == pytest.approx(tau**2 * kl, rel=1e-6)


def test_dist_inter_relation_matches_hand_worked_pearson():
    y_t = torch.tensor([[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]])
    y_s = torch.tensor([[0.2, 0.3, 0.5], [0.5, 0.3, 0.2]])  # row 1: rho = 1; row 2 reversed: rho = -39/42
    expected = 1 - (1 + -39 / 42) / 2
    assert inter_class_relation(y_s, y_t).item() == pytest.approx(expected, rel=1e-5)


def test_dist_matches_the_formula_with_numpys_pearson():
    g = torch.Generator().manual_seed(0)
    z_s, z_t = torch.randn(16, 10, generator=g), 3 * torch.randn(16, 10, generator=g)
    tau, beta, gamma = 4.0, 1.0, 2.0
    y_s, y_t = (F.softmax(z / tau, 1).double().numpy() for z in (z_s, z_t))
    inter = 1 - np.mean([np.corrcoef(y_s[i], y_t[i])[0, 1] for i in range(16)])
    intra = 1 - np.mean([np.corrcoef(y_s[:, c], y_t[:, c])[0, 1] for c in range(10)])
    expected = tau**2 * (beta * inter + gamma * intra)
    assert dist_term(z_s, z_t, tau, beta, gamma).item() == pytest.approx(expected, rel=1e-4)


def test_dist_is_zero_for_identical_outputs_and_invariant_to_positive_affine_maps():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(8, 10, generator=g)
    assert dist_term(z, z.clone(), 1.0, 1.0, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    y_s, y_t = F.softmax(torch.randn(8, 10, generator=g), 1), F.softmax(z, 1)
    scale, shift = torch.rand(8, 1, generator=g) + 0.5, torch.randn(8, 1, generator=g)
    # per row: the inter-class relation is a correlation within each row
    assert inter_class_relation(scale * y_s + shift, y_t).item() == pytest.approx(
        inter_class_relation(y_s, y_t).item(), abs=1e-5
    )
    # one map for the whole batch keeps the intra-class relation too
    assert intra_class_relation(2.5 * y_s - 0.3, y_t).item() == pytest.approx(
        intra_class_relation(y_s, y_t).item(), abs=1e-5
    )
    # and a negative scale is not a relation-preserving map
    assert inter_class_relation(-y_s, y_t).item() != pytest.approx(inter_class_relation(y_s, y_t).item(), abs=1e-3)


def test_label_term_is_added_by_alpha_and_soft_ce_ignores_labels():
    g = torch.Generator().manual_seed(2)
    s, t, y = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g), torch.tensor([0, 1, 2, 3])
    kd = build_loss("kd", tau=2.0, alpha=0.5)
    assert kd(s, t, y).item() == pytest.approx(kd(s, t).item() + 0.5 * F.cross_entropy(s, y).item(), rel=1e-6)
    soft = build_loss("soft_ce")
    assert (
        soft(s, t, y).item()
        == soft(s, t).item()
        == pytest.approx(-(F.softmax(t, 1) * F.log_softmax(s, 1)).sum(1).mean().item(), rel=1e-6)
    )


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="unknown loss 'kl'.*ce, kd, dist, soft_ce"):
        build_loss("kl")
    with pytest.raises(ValueError, match="tau must be > 0"):
        build_loss("kd", tau=0)
    loss = build_loss("dist")
    with pytest.raises(ValueError, match=r"student logits \(4, 5\) and teacher logits \(4, 6\)"):
        loss(torch.zeros(4, 5), torch.zeros(4, 6))
    with pytest.raises(ValueError, match="NaN"):
        loss(torch.zeros(4, 5), torch.full((4, 5), float("nan")))


def test_ce_takes_the_pseudo_labels_as_given_whatever_tau():
    g = torch.Generator().manual_seed(3)
    s, q = torch.randn(4, 5, generator=g), F.softmax(torch.randn(4, 5, generator=g), 1)
    expected = F.cross_entropy(s, q).item()
    assert build_loss("ce", tau=4.0)(s, torch.log(q)).item() == pytest.approx(expected, rel=1e-6)
    assert build_loss("soft_ce", tau=4.0)(s, torch.log(q)).item() != pytest.approx(expected, rel=1e-3)
