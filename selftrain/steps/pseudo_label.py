"""The pseudo-label step (Noisy Student, distillation): a labeled batch and a pseudo-labeled batch `unlabeled_ratio`
times larger go through the noised student in one forward pass, and the loss is
    labeled_weight * CE(y, f(x_l))  +  pseudo_weight * L(f(x_u), log q)
each term a mean over its own part of the batch (so the two are normalised separately), L the student's `loss`
from selftrain.losses (ce: CE against q itself; soft_ce drops the labeled term). An epoch is one pass over the
pseudo-labeled set.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from selftrain.data import Split
from selftrain.losses import build_loss
from selftrain.params import StudentParams
from selftrain.steps.supervised import SupervisedStep, image_loader
from selftrain.train import Context, StepBatches, StudentRun


class PseudoLabelStep(SupervisedStep):
    """`pseudo` is (images, target probabilities): filter-balance's pseudo-labels or the stored teacher's outputs."""

    def __init__(self, model: nn.Module, p: StudentParams, labeled: Split, pseudo: tuple[np.ndarray, np.ndarray], ctx: Context, seed: int) -> None:
        self.pseudo = pseudo
        self.pseudo_batches = StepBatches(len(pseudo[0]), p.batch_size * p.unlabeled_ratio, seed, 1, world=ctx.world)
        super().__init__(model, p, labeled, ctx, seed)
        self.loss_fn = build_loss(p.loss, tau=p.loss_tau, alpha=p.labeled_weight, beta=p.dist_beta, gamma=p.dist_gamma)
        self.labeled_weight, self.pseudo_weight = self.loss_fn.alpha, p.pseudo_weight

    @classmethod
    def build(cls, run: StudentRun) -> PseudoLabelStep:
        """Noisy Student: filter-balance's pseudo-labels; distill: every unlabeled image, the stored teacher's outputs."""
        pseudo = run.pseudo
        if pseudo is None:
            assert run.unlabeled is not None and run.stored is not None
            pseudo = (run.unlabeled.images, np.exp(run.stored))
        return cls(run.student, run.params.student, run.labeled, pseudo, run.ctx, run.params.seed)

    def _steps_per_epoch(self) -> int:
        return self.pseudo_batches.per_pass

    def batches(self, start: int) -> Iterator[Any]:
        labeled = super().batches(start)
        self.pseudo_batches.start = start
        return zip(labeled, image_loader(*self.pseudo, self.p, self.pseudo_batches, self.seed + 4, self.ctx.workers), strict=False)

    def __call__(self, batch: Any) -> dict[str, float]:
        (x_l, y_l), (x_u, q_u) = batch
        return super().__call__((x_l, y_l, x_u, q_u))

    def pseudo_loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # the losses take teacher logits: log q is one (softmax(log q) = q); the floor keeps hard labels finite
        return self.loss_fn(out, torch.log(targets.to(self.ctx.device).float().clamp_min(1e-12)))
