"""The Meta Pseudo Labels step (the maths: update.py), its teacher a network over images; reduced MPL
(selftrain.methods.reduced_mpl) subclasses it.

Step t's data comes from selftrain.steps.views (drawn from (seed, t) alone: a resumed run takes exactly the steps an
uninterrupted one takes). Under torchrun the student and the teacher are both DDP-wrapped, every process takes a
disjoint share of each step's labeled and unlabeled images, and the MPL signal h (and so its moving-average baseline)
is averaged over the processes, so that every process updates its teacher with the same scalar.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from selftrain import distributed, models
from selftrain.accuracy import accuracy
from selftrain.data import Split
from selftrain.methods.mpl import MplParams
from selftrain.methods.mpl.update import MplState, Parallel, mpl_step
from selftrain.params import StudentParams, TrainParams
from selftrain.steps.base import Step, unwrapped
from selftrain.steps.supervised import SupervisedStep
from selftrain.steps.views import StepImages, on_device, step_loader
from selftrain.train import Context, Finished, StudentRun, fit


class MplStep(Step):
    """One MPL step: the student on the teacher's hard pseudo-labels of strong views, then the teacher on the change
    this made to the student's labeled loss, plus its labeled CE and UDA."""

    method = "mpl"

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
        teacher_lr: float | None = None,
    ) -> None:
        distributed.check_shares(p.batch_size, ctx.world, "methods.mpl.batch_size")
        super().__init__(ctx)
        self.model = student
        self.teacher = teacher
        self.p = p
        self.sp = sp
        self.state = MplState()
        self.images = StepImages(labeled, unlabeled, p.batch_size, p.unlabeled_ratio, sp, seed, ctx.world)
        self.total = p.steps
        self.steps_per_epoch = max(1, len(unlabeled) // (p.batch_size * p.unlabeled_ratio))
        lrs = {"student": p.student_lr, "teacher": teacher_lr or p.teacher_lr}
        for name, module in (("student", student), ("teacher", teacher)):
            self.optimise(name, module, lr=lrs[name], weight_decay=p.weight_decay, total=p.steps, warmup=p.warmup_steps)
        self.labeled = labeled
        self.seed = seed
        self.eval_batch = 512
        self.val: Split | None = None  # the finetune's validation (build() sets it)
        # the loop's schedule: a log row, a validation and a checkpoint every methods.mpl.checkpoint_every steps
        self.log_every = p.checkpoint_every
        self.val_every = 1
        self.ema_decay = p.ema_decay
        self.checkpoint_every = p.checkpoint_every
        world = ctx.world
        self.par = Parallel(
            ctx.autocast, lambda h: distributed.mean(torch.tensor([h], dtype=torch.float64), world).item()
        )

    @classmethod
    def build(cls, run: StudentRun) -> MplStep:
        """The student against the generation's teacher (a copy of it, which MPL trains)."""
        assert run.teacher is not None and run.unlabeled is not None
        teacher, _ = models.load_checkpoint(run.teacher)
        return cls._with(run, teacher.to(run.ctx.device))

    @classmethod
    def _with(cls, run: StudentRun, teacher: nn.Module, **kwargs: Any) -> MplStep:
        assert run.unlabeled is not None
        p = run.params
        step = cls(
            run.student, teacher, p.methods.mpl, p.student, run.labeled, run.unlabeled.images, run.ctx, p.seed, **kwargs
        )
        step.val = run.val
        step.eval_batch = p.evaluate.batch_size
        return step

    def finish(self, kept: nn.Module, rows: list[dict[str, Any]], desc: str) -> Finished:
        """The student finetuned on labeled data (methods.mpl.finetune_epochs), the teacher's weights, both logs."""
        p = self.p
        if p.finetune_epochs:
            finetune = TrainParams(
                epochs=p.finetune_epochs,
                batch_size=p.batch_size,
                lr=p.finetune_lr,
                weight_decay=p.weight_decay,
                label_smoothing=self.sp.label_smoothing,
                augment="s1",
            )
            tune = SupervisedStep(kept, finetune, self.labeled, self.ctx, self.seed)
            kept, tuned, _ = fit(
                tune, self.ctx, self.seed, log_every=tune.steps_per_epoch, val=self.val, desc=f"{desc} finetune"
            )
        else:
            assert self.val is not None
            tuned = [{"epoch": 0, "val_top1": accuracy(kept, self.val, self.eval_batch, self.ctx.device)["top1"]}]
        teacher = {k: v.detach().cpu().contiguous() for k, v in unwrapped(self.teacher).state_dict().items()}
        files = {"mpl_teacher.safetensors": safetensors.torch.save(teacher)}
        return (
            kept,
            {"mpl_log.csv": rows, "log.csv": tuned},
            files,
            {"method": self.method, "steps": p.steps, "mpl_val_top1": rows[-1]["val_top1"]},
        )

    def batches(self, start: int) -> Iterator[Any]:
        return step_loader(self.images, start, self.ctx.workers)

    def __call__(self, batch: dict[str, Any]) -> dict[str, float]:
        x_l, y_l, x_uw, x_us = on_device(batch, self.sp, self.ctx.device)
        s, t = self.trained["student"], self.trained["teacher"]
        out = mpl_step(t.net, s.net, t.opt, s.opt, x_l, y_l, x_uw, x_us, self.p, self.state, self.par)
        return self._advance(out, len(x_l) + len(x_uw))

    def _advance(self, out: dict[str, float], images: int) -> dict[str, float]:
        for t in self.trained.values():  # the optimisers stepped inside the update (update.py): their schedules here
            t.sched.step()
        return {
            "loss": out["student_loss"],
            **{k: out[k] for k in ("teacher_loss", "teacher_uda", "h", "signal")},
            "images": images,
        }

    def extra_state(self) -> dict[str, Any]:
        return {"mpl_step": self.state.step, "baseline": self.state.baseline}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.state.step = state["mpl_step"]
        self.state.baseline = state["baseline"]
