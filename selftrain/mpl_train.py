"""The MPL loop on images (train-mpl and train-reduced-mpl), checkpointed every N steps and resumable.

Step t's data (which images, their augmentations) comes from generators seeded by (seed, t); a
checkpoint holds both models, both optimisers and schedulers, the step, the MPL baseline, the log
and torch's RNG state (dropout, stochastic depth). So a run restarted from its last checkpoint takes
exactly the steps an uninterrupted run takes: on CPU the result is bitwise the same.
The resume file is selftrain.resume's: plain tensors and numbers, loaded with weights_only=True; a
checkpoint of another run (other params, teacher or data) is ignored, not resumed.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from selftrain import resume as resume_state, runtime
from selftrain.data import Split
from selftrain.evaluate import accuracy
from selftrain.mpl import MplConfig, MplState, mpl_step, reduced_mpl_step
from selftrain.noise import ImageDataset, pil_policy, seed_augmentation, train_batch
from selftrain.params import MplParams, StudentParams
from selftrain.train import lr_lambda

log = logging.getLogger("selftrain")

def mpl_config(p: MplParams) -> MplConfig:
    return MplConfig(
        uda_weight=p.uda_weight, uda_temperature=p.uda_temperature, uda_threshold=p.uda_threshold,
        uda_ramp_steps=p.uda_ramp_steps, baseline_decay=p.baseline_decay, mpl_weight=p.mpl_weight, anchor_weight=p.reduced_anchor_weight,
    )


@dataclass
class Batch:
    x_l: torch.Tensor  # labeled, weak view (flip + crop)
    y_l: torch.Tensor
    x_uw: torch.Tensor  # unlabeled, weak view (UDA's target)
    x_us: torch.Tensor  # the same unlabeled images, strong view: the student's noise (RandAugment + flip + crop)
    rows_u: np.ndarray  # which unlabeled images


class StepData:
    """Draws step t's batch from (seed, t) alone, so any step can be replayed without the ones before it."""

    def __init__(self, labeled: Split, unlabeled: np.ndarray, p: MplParams, sp: StudentParams, seed: int, device: torch.device):
        self.labeled, self.unlabeled, self.p, self.sp, self.seed, self.device = labeled, unlabeled, p, sp, seed, device
        self.strong = pil_policy(sp, unlabeled.shape[1], unlabeled.shape[3])

    def _views(self, images: np.ndarray, pil, policy: str, gen: torch.Generator) -> torch.Tensor:
        ds = ImageDataset(images, np.zeros(len(images)), pil)
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        return runtime.to_device(train_batch(x.to(self.device), policy, gen), self.device)

    def __call__(self, step: int) -> Batch:
        rng = np.random.default_rng([self.seed, step])
        rows_l = rng.choice(len(self.labeled), min(self.p.batch_size, len(self.labeled)), replace=False)
        rows_u = rng.choice(len(self.unlabeled), min(self.p.batch_size * self.p.unlabeled_ratio, len(self.unlabeled)), replace=False)
        seed_augmentation(int(rng.integers(2**32)))
        gen = torch.Generator().manual_seed(int(rng.integers(2**63)))
        images_u = self.unlabeled[rows_u]
        return Batch(
            self._views(self.labeled.images[rows_l], None, "s1", gen),
            torch.from_numpy(self.labeled.labels[rows_l]).long().to(self.device),
            self._views(images_u, None, "s1", gen),
            self._views(images_u, self.strong, self.sp.augment, gen),
            rows_u,
        )


def fit_mpl(
    student: nn.Module,
    teacher: nn.Module,
    p: MplParams,
    sp: StudentParams,
    labeled: Split,
    unlabeled: np.ndarray,
    device: torch.device,
    seed: int,
    *,
    resume: str,
    fingerprint: str,
    stored_logits: np.ndarray | None = None,
    val: Split | None = None,
    desc: str = "mpl",
) -> tuple[list[dict[str, Any]], int]:
    """Run MPL steps until `p.steps`, in place; with `stored_logits` (the large teacher's log-probabilities of
    `unlabeled`) `teacher` is a LogitTeacher and the step is reduced MPL. Returns one log row per checkpoint
    interval and the step it resumed from (0 when it started afresh)."""
    cfg, state = mpl_config(p), MplState()
    nets = {"student": student, "teacher": teacher}
    lrs = {"student": p.student_lr, "teacher": p.reduced_lr if stored_logits is not None else p.teacher_lr}
    opts: dict[str, Any] = {f"{k}_opt": torch.optim.AdamW(m.parameters(), lr=lrs[k], weight_decay=p.weight_decay) for k, m in nets.items()}
    for k in nets:
        opts[f"{k}_sched"] = torch.optim.lr_scheduler.LambdaLR(opts[f"{k}_opt"], lr_lambda(p.steps, p.warmup_steps))
    rows: list[dict[str, Any]] = []
    start = 0
    torch.manual_seed(seed)
    blob = resume_state.load(resume, fingerprint, "MPL")
    if blob is not None:
        for k, m in nets.items():
            getattr(m, "_orig_mod", m).load_state_dict(blob[k])
        for k, o in opts.items():
            o.load_state_dict(blob[k])
        resume_state.set_rng_state(blob)
        start, state.baseline, rows = blob["step"], blob["baseline"], list(blob["log"])
        state.step = start
        log.info("%s: resuming from the checkpoint at step %d of %d ('%s')", desc, start, p.steps, resume)
    data = StepData(labeled, unlabeled, p, sp, seed, device)
    z = torch.from_numpy(stored_logits).float() if stored_logits is not None else None
    student.train()
    teacher.train()
    sums, t0, since = np.zeros(5), time.perf_counter(), start
    bar = tqdm(total=p.steps, initial=start, desc=desc, unit="step", mininterval=2.0)
    for step in range(start, p.steps):
        b = data(step)
        if z is None:
            out = mpl_step(teacher, student, opts["teacher_opt"], opts["student_opt"], b.x_l, b.y_l, b.x_uw, b.x_us, cfg, state)
        else:
            z_u = z[b.rows_u].to(device)
            out = reduced_mpl_step(teacher, student, opts["teacher_opt"], opts["student_opt"], b.x_l, b.y_l, z_u, b.x_us, cfg, state)
        opts["student_sched"].step()
        opts["teacher_sched"].step()
        sums += [out["student_loss"], out["teacher_loss"], out["teacher_uda"], out["h"], out["signal"]]
        bar.update()
        bar.set_postfix(h=f"{out['h']:+.4f}", loss=f"{out['student_loss']:.3f}", refresh=False)
        done = step + 1
        if done % p.checkpoint_every == 0 or done == p.steps:
            row = {
                "step": done, "student_lr": opts["student_sched"].get_last_lr()[0],
                **dict(zip(("student_loss", "teacher_loss", "teacher_uda", "h", "signal"), (sums / (done - since)).tolist())),
                "steps_per_s": (done - since) / (time.perf_counter() - t0),
            }
            if val is not None:
                row["val_top1"] = accuracy(student, val, 512, device)["top1"]
            rows.append(row)
            resume_state.save(resume, fingerprint, done, {
                "baseline": state.baseline, "log": rows,
                **{k: getattr(m, "_orig_mod", m).state_dict() for k, m in nets.items()}, **{k: o.state_dict() for k, o in opts.items()},
            })
            sums, t0, since = np.zeros(5), time.perf_counter(), done
    bar.close()
    return rows, start
