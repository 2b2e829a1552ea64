"""The one training loop, for every method: `fit(step, ...)`.

A method is a `Step` (selftrain.steps.base): it owns its models, optimisers, schedulers and data, and one call
updates them on one batch and returns that step's logs; `finish` turns the trained model into the stage's
outputs (MPL: a finetune, the teacher's weights). Everything else is written once, here: seeding,
resume (every process's own random state), EMA (timm's ModelEmaV3), periodic logging and validation,
tqdm, and checkpoints. Where a step runs (device, mixed precision, DataLoader workers, DDP under torchrun)
comes from the `Context` it is built with, so a step reads the same on one CPU and on 16 GPUs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch import nn
from tqdm.auto import tqdm

from selftrain import distributed, runtime
from selftrain import resume as resume_state
from selftrain.accuracy import accuracy
from selftrain.data import Split
from selftrain.noise import seed_augmentation

if TYPE_CHECKING:
    from selftrain.steps.base import Step

logger = logging.getLogger("selftrain")


@dataclass(frozen=True)
class Context:
    """Where a step runs: the device, the torchrun world and the DataLoader workers per process."""

    device: torch.device
    world: distributed.World = field(default_factory=distributed.World)
    workers: int = 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """`model` for the training forward pass: itself in one process, DDP over the world otherwise."""
        return distributed.wrap(model, self.world, self.device)

    def autocast(self) -> Any:
        """Mixed precision for the forward passes (bfloat16 on CUDA, nothing on CPU)."""
        return runtime.autocast(self.device)


Finished = tuple[nn.Module, dict[str, list[dict[str, Any]]], dict[str, bytes], dict[str, Any]]


@dataclass
class StudentRun:
    """What a method's training step is built from (`build(run)` of its class, named by selftrain.methods)."""

    params: Any  # selftrain.params.Params
    ctx: Context
    student: nn.Module  # the model to train, on ctx.device
    labeled: Split
    val: Split
    unlabeled: Split | None = None
    teacher: str | None = None  # the teacher's checkpoint, for a method that runs it
    pseudo: tuple[np.ndarray, np.ndarray] | None = None  # consumes pseudo_labels: (images, target probabilities)
    pseudo_rows: np.ndarray | None = None  # consumes pseudo_labels: their rows in the unlabeled split (with copies)
    stored: np.ndarray | None = None  # consumes logits: the teacher's log-probabilities of every unlabeled image


class StepBatches(torch.utils.data.Sampler):
    """The batches (lists of row indices) of steps `start`, `start` + 1, ... forever: pass k over the `n` rows is
    the permutation drawn from (seed, k), so any step's batch is known without the ones before it and a
    resumed run draws exactly what an uninterrupted one draws. Full batches only, unless n < batch. Under
    torchrun each process gets every `world.size`-th row of each batch, starting at its rank: a batch that does not
    split evenly is refused."""

    def __init__(
        self, n: int, batch: int, seed: int, stream: int, start: int = 0, world: distributed.World = distributed.World()
    ) -> None:
        if n == 0:
            raise ValueError("nothing to train on: the set is empty")
        self.n = n
        self.batch = min(batch, n)
        self.seed = seed
        self.stream = stream
        self.start = start
        self.world = world
        distributed.check_shares(self.batch, world, f"a step's batch (of a set of {n} rows)")
        self.per_pass = n // self.batch

    def __len__(self) -> int:
        return self.per_pass

    def __iter__(self) -> Iterator[list[int]]:
        step, drawn, order = self.start, -1, np.arange(0)
        while True:
            k, j = divmod(step, self.per_pass)
            if drawn != k:
                drawn, order = k, np.random.default_rng([self.seed, self.stream, k]).permutation(self.n)
            yield order[j * self.batch : (j + 1) * self.batch][self.world.rank :: self.world.size].tolist()
            step += 1


def lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    """Linear warmup over `warmup` steps, then cosine decay to 0 at `total`."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return f


def fit(
    step: Step,
    ctx: Context,
    seed: int,
    *,
    log_every: int,
    val: Split | None = None,
    val_every: int = 1,
    ema_decay: float | None = None,
    desc: str = "train",
    resume: str | None = None,
    fingerprint: str = "",
    checkpoint_every: int = 0,
) -> tuple[nn.Module, list[dict[str, Any]], int]:
    """Run `step` from where `resume` left it (or 0) to `step.total`; return the model to keep (`step.model`, or its
    EMA), one log row per `log_every` steps and the step it resumed from.

    A row holds the step's logs averaged over its steps (and over the processes), the learning rate, throughput and,
    every `val_every` rows and at the end, val top-1. With `resume`, the whole state is saved there every
    `checkpoint_every` steps (selftrain.resume) and a run with the same `fingerprint` continues from it. Under
    torchrun only rank 0 saves; every process restores its own random state."""
    w, total = ctx.world, step.total
    runtime.seed_everything(seed)
    torch.manual_seed(
        seed + w.rank
    )  # dropout and stochastic depth differ between processes (rank 0: as in one process)
    seed_augmentation(seed + 2 + 7919 * w.rank)
    ema = ModelEmaV3(step.model, decay=ema_decay, use_warmup=True) if ema_decay else None
    kept = ema.module if ema else step.model

    start, log, sums = 0, [], {}
    seen: float = 0  # images this process trained on since the last row
    blob = resume_state.load(resume, fingerprint, desc) if resume else None
    if blob is not None:
        step.load_state_dict(blob["step_state"])
        if ema:
            ema.module.load_state_dict(blob["ema"])
        start, log = blob["step"], list(blob["log"])
        ranks = blob["ranks"]
        if len(ranks) == w.size:  # each process continues its own random streams and running sums
            mine = ranks[w.rank]
            step.load_rank_state(mine["step"])
            resume_state.set_rng_state(mine["rng"])
            seen, sums = mine["seen"], dict(mine["sums"])
        else:  # another world size: the model and schedule carry over; the random streams start anew from the step
            logger.warning(
                "%s: the checkpoint was saved by %d processes, this run has %d: each process's random state is "
                "drawn anew (the run goes on, but is not bitwise the uninterrupted one)",
                desc,
                len(ranks),
                w.size,
            )
            torch.manual_seed(seed + w.rank + 104729 * start)
            seed_augmentation(seed + 2 + 7919 * w.rank + 104729 * start)
            step.reseed(seed + 7919 * w.rank + 104729 * start)
        logger.info("%s: resuming from the checkpoint at step %d of %d ('%s')", desc, start, total, resume)
    batches = step.batches(start)

    bar = tqdm(total=total, initial=start, desc=desc, unit="step", mininterval=2.0)
    step.model.train()
    t0, since = time.perf_counter(), start
    for i in range(start, total):
        logs = step(next(batches))
        if ema:
            ema.update(step.model, step=i + 1)
        seen += logs.pop("images")
        sums = {k: sums.get(k, 0.0) + v for k, v in logs.items()}
        bar.update()
        bar.set_postfix(loss=f"{logs['loss']:.3f}", refresh=False)
        done = i + 1
        if done % log_every == 0 or done == total:
            names = list(sums)
            steps = done - (done - 1) // log_every * log_every  # in this row (a resumed run's sums carry over)
            means = distributed.mean(torch.tensor([sums[k] for k in names], dtype=torch.float64), w) / steps
            elapsed = time.perf_counter() - t0
            epoch: float = (
                done // step.steps_per_epoch
                if done % step.steps_per_epoch == 0
                else round(done / step.steps_per_epoch, 3)
            )
            row = {
                "epoch": epoch,
                "step": done,
                "lr": step.lr(),
                **dict(
                    zip(names, means.tolist())
                ),  # plain floats: the log goes into resume files, which hold no numpy objects
                "images_per_s": seen * w.size / elapsed,
                "steps_per_s": (done - since) / elapsed,
            }
            if val is not None:  # blank between checks: the curve is only for the log and its plot
                row["val_top1"] = (
                    accuracy(kept, val, 512, ctx.device)["top1"]
                    if (len(log) + 1) % val_every == 0 or done == total
                    else None
                )
                step.model.train()
            log.append(row)
            logger.info(
                "%s step %d/%d: %s",
                desc,
                done,
                total,
                ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "step" and v is not None),
            )
            t0, since, seen, sums = time.perf_counter(), done, 0.0, {}
        if resume and checkpoint_every and done % checkpoint_every == 0 and done < total:
            # every process's own random state and running sums, so that each resumes its own streams (rank 0 writes)
            saving = time.perf_counter()
            ranks = distributed.gather(
                {"rng": resume_state.rng_state(), "step": step.rank_state(), "seen": seen, "sums": sums}, w
            )
            if w.main:
                resume_state.save(
                    resume,
                    fingerprint,
                    done,
                    {
                        "step_state": step.state_dict(),
                        "ema": ema.module.state_dict() if ema else {},
                        "log": log,
                        "ranks": ranks,
                    },
                )
            spent = time.perf_counter() - saving
            t0 += spent  # the rows' throughput is training's; the log says what a checkpoint costs
            logger.info("%s: checkpoint at step %d saved in %.1f s", desc, done, spent)
    bar.close()
    return kept, log, start
