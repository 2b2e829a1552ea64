"""The FixMatch step (Sohn et al. 2020), with FlexMatch's and FreeMatch's thresholds and distribution alignment as
options (thresholds.py). Per step: a labeled batch and `unlabeled_ratio` times as many unlabeled images,
each as a weak view (flip + crop) and a strong one (the student's RandAugment + flip + crop, then Cutout), all
three in one forward pass (BatchNorm sees them together, as in FixMatch). The loss is

    CE(y, f(weak(x)))  +  lambda * mean(mask * CE(argmax q, f(strong(u))))  [+ FreeMatch's fairness term]

with q = softmax(f(weak(u))) detached (aligned, if asked), and the mask from the threshold rule. The model kept and
evaluated is the EMA of the weights. Under torchrun the threshold rule and the alignment update from the whole
step's unlabeled batch (every process's share), so that every process keeps the same state.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selftrain import distributed
from selftrain.data import Split
from selftrain.methods.fixmatch import FixMatchParams, thresholds
from selftrain.params import StudentParams
from selftrain.steps.base import Step
from selftrain.steps.views import StepImages, on_device, step_loader
from selftrain.train import Context, Finished, StudentRun


class FixMatchStep(Step):
    method = "fixmatch"

    def __init__(
        self,
        model: nn.Module,
        p: FixMatchParams,
        sp: StudentParams,
        labeled: Split,
        unlabeled: np.ndarray,
        ctx: Context,
        seed: int,
    ) -> None:
        distributed.check_shares(p.batch_size, ctx.world, "methods.fixmatch.batch_size")
        super().__init__(ctx)
        self.model = model
        self.p = p
        self.sp = sp
        self.images = StepImages(labeled, unlabeled, p.batch_size, p.unlabeled_ratio, sp, seed, ctx.world)
        self.total = p.steps
        self.steps_per_epoch = max(1, len(unlabeled) // (p.batch_size * p.unlabeled_ratio))
        self.net = self.optimise(
            "model", model, lr=p.lr, weight_decay=p.weight_decay, total=p.steps, warmup=p.warmup_steps
        )
        self.labeller = thresholds.PseudoLabeller.build(p, labeled.labels, len(labeled.classes), len(unlabeled))
        self.log_every = p.checkpoint_every
        self.val_every = 1
        self.ema_decay = p.ema_decay
        self.checkpoint_every = p.checkpoint_every

    @classmethod
    def build(cls, run: StudentRun) -> FixMatchStep:
        assert run.unlabeled is not None
        p = run.params
        return cls(run.student, p.methods.fixmatch, p.student, run.labeled, run.unlabeled.images, run.ctx, p.seed)

    def batches(self, start: int) -> Iterator[Any]:
        return step_loader(self.images, start, self.ctx.workers)

    def __call__(self, batch: dict[str, Any]) -> dict[str, float]:
        x_l, y_l, x_uw, x_us = on_device(batch, self.sp, self.ctx.device, self.p.cutout)
        with self.ctx.autocast():
            out = self.net(torch.cat([x_l, x_uw, x_us])).float()
        n_l, n_u = len(x_l), len(x_uw)
        logits_l, logits_uw, logits_us = out[:n_l], out[n_l : n_l + n_u], out[n_l + n_u :]
        targets, mask, probs = self.labeller(logits_uw, batch["rows_u"], self.ctx.world)
        loss_l = F.cross_entropy(logits_l, y_l, label_smoothing=self.sp.label_smoothing)
        loss_u = thresholds.masked_ce(logits_us, targets, mask)
        loss = loss_l + self.p.unlabeled_weight * loss_u
        fair = self.labeller.fairness(logits_us, mask) if self.p.fairness_weight else None
        if fair is not None:
            loss = loss + self.p.fairness_weight * fair
        self.update(loss, "model")
        return {
            "loss": loss.item(),
            "loss_labeled": loss_l.item(),
            "loss_unlabeled": loss_u.item(),
            "loss_fairness": 0.0 if fair is None else fair.item(),
            "mask_rate": mask.mean().item(),  # the share of unlabeled images that counted
            "confidence": probs.max(1).values.mean().item(),  # of the weak views (aligned)
            "train_top1": (logits_l.argmax(1) == y_l).float().mean().item(),
            "images": n_l + 2 * n_u,
        }

    def finish(self, kept: nn.Module, rows: list[dict[str, Any]], desc: str) -> Finished:
        return (
            kept,
            {"log.csv": rows},
            {},
            {"method": self.method, "steps": self.p.steps, "threshold": self.p.threshold},
        )

    def extra_state(self) -> dict[str, Any]:
        return self.labeller.state_dict()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.labeller.load_state_dict(state)
