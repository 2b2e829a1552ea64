"""Distillation losses by name: `ce`, `kd`, `dist`, `soft_ce` (formulas in shared/METHODS.md).

Each loss compares student logits with teacher logits (stored or live) on the same images;
`ce`, `kd` and `dist` add `alpha` x cross-entropy on labels where labels are given, `soft_ce` is
label-free (offline distillation, Shen et al. 2021). DIST is written out here because no
maintained library ships it; it follows the authors' reference code (Huang et al. 2022).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of `a` with the same row of `b`."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def inter_class_relation(y_s: Tensor, y_t: Tensor) -> Tensor:
    """1 - mean over samples of the correlation between student and teacher class probabilities."""
    return 1 - pearson_rows(y_s, y_t).mean()


def intra_class_relation(y_s: Tensor, y_t: Tensor) -> Tensor:
    """1 - mean over classes of the correlation between student and teacher across the batch."""
    return inter_class_relation(y_s.T, y_t.T)


def kd_term(student: Tensor, teacher: Tensor, tau: float) -> Tensor:
    """tau^2 KL(softmax(teacher/tau) || softmax(student/tau)), mean over the batch (Hinton et al.)."""
    return tau**2 * F.kl_div(
        F.log_softmax(student / tau, 1), F.log_softmax(teacher / tau, 1), reduction="batchmean", log_target=True
    )


def dist_term(student: Tensor, teacher: Tensor, tau: float, beta: float, gamma: float) -> Tensor:
    """beta tau^2 L_inter + gamma tau^2 L_intra on softmax(logits/tau)."""
    y_s, y_t = F.softmax(student / tau, 1), F.softmax(teacher / tau, 1)
    return tau**2 * (beta * inter_class_relation(y_s, y_t) + gamma * intra_class_relation(y_s, y_t))


def soft_ce_term(student: Tensor, teacher: Tensor, tau: float) -> Tensor:
    """-sum_c p_t(c) log p_s(c) with p_t = softmax(teacher/tau), mean over the batch."""
    return F.cross_entropy(student, F.softmax(teacher / tau, 1))


@dataclass(frozen=True)
class DistillLoss:
    """A named distillation loss; call it with student logits, teacher logits and optional labels."""

    name: str
    term: Callable[[Tensor, Tensor], Tensor]
    alpha: float  # weight of cross-entropy on labels (0 for soft_ce)

    def __call__(self, student: Tensor, teacher: Tensor, labels: Tensor | None = None) -> Tensor:
        if student.shape != teacher.shape:
            raise ValueError(
                f"{self.name}: student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} differ "
                "in shape"
            )
        if not torch.isfinite(teacher).all():
            raise ValueError(f"{self.name}: teacher logits hold NaN or inf")
        loss = self.term(student, teacher)
        if labels is not None and self.alpha:
            loss = loss + self.alpha * F.cross_entropy(student, labels)
        return loss


LOSSES = ("ce", "kd", "dist", "soft_ce")


def build_loss(
    name: str, *, tau: float = 1.0, alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0
) -> DistillLoss:
    """The loss `name` (one of LOSSES) with its temperature and weights."""
    if tau <= 0:
        raise ValueError(f"loss temperature tau must be > 0, got {tau}")
    terms: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        # ce: the student matches the teacher's (soft) pseudo-labels as given, Noisy Student's loss: no tau
        "ce": lambda s, t: soft_ce_term(s, t, 1.0),
        "kd": lambda s, t: kd_term(s, t, tau),
        "dist": lambda s, t: dist_term(s, t, tau, beta, gamma),
        "soft_ce": lambda s, t: soft_ce_term(s, t, tau),
    }
    if name not in terms:
        raise ValueError(f"unknown loss '{name}': choose one of {', '.join(LOSSES)}")
    return DistillLoss(name, terms[name], 0.0 if name == "soft_ce" else alpha)
