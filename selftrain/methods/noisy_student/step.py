"""The pseudo-label step (Noisy Student, distillation): a labeled batch and a pseudo-labeled batch `unlabeled_ratio`
times larger go through the noised student in one forward pass, and the loss is
    labeled_weight * CE(y, f(x_l))  +  pseudo_weight * L(f(x_u), log q)
each term a mean over its own part of the batch (so the two are normalised separately), L the student's `loss`
from selftrain/methods/distill/losses.py (ce: CE against q itself; soft_ce drops the labeled term). An epoch is one
pass over the pseudo-labeled set.

With student.consistency (dropped or all), each step also takes `methods.fixmatch.unlabeled_ratio` times as many
unlabeled images as labeled ones, from those filter-balance did not keep (or all), as a weak and a strong view, and
adds FixMatch's term (selftrain.methods.fixmatch.thresholds, by `methods.fixmatch`'s threshold rule) weighted by
student.consistency_weight: the generations of Noisy Student compose with consistency training.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from selftrain.data import Split
from selftrain.methods.distill.losses import build_loss
from selftrain.methods.fixmatch import FixMatchParams, thresholds
from selftrain.params import StudentParams
from selftrain.steps.supervised import SupervisedStep, image_loader
from selftrain.steps.views import StepImages, on_device, step_loader
from selftrain.train import Context, StepBatches, StudentRun


class PseudoLabelStep(SupervisedStep):
    """`pseudo` is (images, target probabilities): filter-balance's pseudo-labels or the stored teacher's outputs."""

    def __init__(
        self,
        model: nn.Module,
        p: StudentParams,
        labeled: Split,
        pseudo: tuple[np.ndarray, np.ndarray],
        ctx: Context,
        seed: int,
        pool: np.ndarray | None = None,
        fm: FixMatchParams | None = None,
    ) -> None:
        self.pseudo = pseudo
        self.sp = p
        self.pseudo_batches = StepBatches(len(pseudo[0]), p.batch_size * p.unlabeled_ratio, seed, 1, world=ctx.world)
        super().__init__(model, p, labeled, ctx, seed)
        self.loss_fn = build_loss(p.loss, tau=p.loss_tau, alpha=p.labeled_weight, beta=p.dist_beta, gamma=p.dist_gamma)
        self.labeled_weight = self.loss_fn.alpha
        self.pseudo_weight = p.pseudo_weight
        self.views: StepImages | None = None  # the consistency term's images (student.consistency), `pool` of them
        if pool is not None and fm is not None:
            self.fm = fm
            self.views = StepImages(labeled, pool, p.batch_size, fm.unlabeled_ratio, p, seed + 5, ctx.world)
            self.labeller = thresholds.PseudoLabeller.build(fm, labeled.labels, len(labeled.classes), len(pool))

    @classmethod
    def build(cls, run: StudentRun) -> PseudoLabelStep:
        """Noisy Student: filter-balance's pseudo-labels; distill: every unlabeled image, the stored teacher's
        outputs."""
        pseudo, p, unlabeled = run.pseudo, run.params, run.unlabeled
        assert unlabeled is not None
        if pseudo is None:
            assert run.stored is not None
            pseudo = (unlabeled.images, np.exp(run.stored))
        pool = None
        if p.student.consistency == "all":
            pool = unlabeled.images
        elif p.student.consistency == "dropped":
            kept = (
                run.pseudo_rows if run.pseudo_rows is not None else np.arange(len(unlabeled))
            )  # distill keeps every image
            pool = unlabeled.images[np.setdiff1d(np.arange(len(unlabeled)), kept)]
            if len(pool) == 0:
                raise ValueError(
                    "student.consistency is 'dropped' but every unlabeled image was kept: nothing is left for it; use "
                    "'all'"
                )
        return cls(run.student, p.student, run.labeled, pseudo, run.ctx, p.seed, pool, p.methods.fixmatch)

    def _steps_per_epoch(self) -> int:
        return self.pseudo_batches.per_pass

    def batches(self, start: int) -> Iterator[Any]:
        labeled = super().batches(start)
        self.pseudo_batches.start = start
        pseudo = image_loader(*self.pseudo, self.p, self.pseudo_batches, self.seed + 4, self.ctx.workers)
        if self.views is None:
            return zip(labeled, pseudo, strict=False)
        return zip(labeled, pseudo, step_loader(self.views, start, self.ctx.workers), strict=False)

    def __call__(self, batch: Any) -> dict[str, float]:
        (x_l, y_l), (x_u, q_u), *more = batch
        return super().__call__((x_l, y_l, x_u, q_u, *more))

    def consistency_views(self, batch: Any) -> torch.Tensor:
        _, _, x_w, x_s = on_device(batch, self.p, self.ctx.device, self.fm.cutout)
        return torch.cat([x_w, x_s])

    def consistency_loss(self, out: torch.Tensor, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        weak, strong = out.chunk(2)
        targets, mask, _ = self.labeller(weak, batch["rows_u"], self.ctx.world)
        loss = thresholds.masked_ce(strong, targets, mask)
        return self.sp.consistency_weight * loss, {"loss_consistency": loss.item(), "mask_rate": mask.mean().item()}

    def extra_state(self) -> dict[str, Any]:
        return self.labeller.state_dict() if self.views is not None else {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if self.views is not None:
            self.labeller.load_state_dict(state)

    def pseudo_loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # the losses take teacher logits: log q is one (softmax(log q) = q); the floor keeps hard labels finite
        return self.loss_fn(out, torch.log(targets.to(self.ctx.device).float().clamp_min(1e-12)))
