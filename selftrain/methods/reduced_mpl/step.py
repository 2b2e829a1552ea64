"""The reduced MPL step: MPL's (selftrain.methods.mpl.step), its teacher a small MLP over the large teacher's
stored logits (update.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from selftrain import runtime
from selftrain.data import Split
from selftrain.methods.mpl import MplParams
from selftrain.methods.mpl.step import MplStep
from selftrain.methods.reduced_mpl import ReducedMplParams
from selftrain.methods.reduced_mpl.update import LogitTeacher, reduced_mpl_step
from selftrain.params import StudentParams
from selftrain.steps.views import on_device
from selftrain.train import Context, StudentRun


class ReducedMplStep(MplStep):
    """Reduced MPL: `teacher` is a LogitTeacher over `stored` (the large teacher's log-probabilities of every
    unlabeled image, in the split's order); no image passes through a teacher."""

    method = "reduced_mpl"

    @classmethod
    def build(cls, run: StudentRun) -> MplStep:
        """A fresh MLP teacher over the stored logits (its initial weights, like every other model's, from the seed)."""
        assert run.stored is not None
        runtime.seed_everything(run.params.seed)
        rp = run.params.methods.reduced_mpl
        teacher = LogitTeacher(run.stored.shape[1], rp.hidden)
        return cls._with(run, teacher.to(run.ctx.device), stored=run.stored, rp=rp)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        p: MplParams,
        sp: StudentParams,
        labeled: Split,
        unlabeled: np.ndarray,
        ctx: Context,
        seed: int,
        *,
        stored: np.ndarray,
        rp: ReducedMplParams,
    ) -> None:
        super().__init__(student, teacher, p, sp, labeled, unlabeled, ctx, seed, teacher_lr=rp.lr)
        self.anchor_weight = rp.anchor_weight
        self.stored = torch.from_numpy(stored).float()

    def __call__(self, batch: dict[str, Any]) -> dict[str, float]:
        x_l, y_l, x_uw, x_us = on_device(batch, self.sp, self.ctx.device)
        z_u, s, t = self.stored[batch["rows_u"]].to(self.ctx.device), self.trained["student"], self.trained["teacher"]
        out = reduced_mpl_step(
            t.net, s.net, t.opt, s.opt, x_l, y_l, z_u, x_us, self.p, self.state, self.anchor_weight, self.par
        )
        return self._advance(out, len(x_l) + len(x_us))
