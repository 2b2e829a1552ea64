"""The one training loop: supervised (teacher) and joint labeled + pseudo-labeled (student).

A step takes a labeled batch and, for the student, a pseudo-labeled batch `unlabeled_ratio`
times larger; both go through the noised model in one forward pass and the loss is
    labeled_weight * CE(y, f(x_l))  +  pseudo_weight * L(f(x_u), log q)
each term a mean over its own part of the batch (so the two are normalised separately), L the
student's `loss` from selftrain.losses (ce: CE against q itself; soft_ce drops the labeled term).
With `ema_decay` set, an EMA of the weights (timm's ModelEmaV3) is validated and returned instead.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.utils import ModelEmaV3
from torch import nn
from tqdm.auto import tqdm

from selftrain import distributed, resume as resume_state, runtime
from selftrain.losses import build_loss
from selftrain.data import Split
from selftrain.evaluate import accuracy
from selftrain.noise import ImageDataset, pil_policy, seed_augmentation, seed_worker, train_batch
from selftrain.params import StudentParams, TrainParams

logger = logging.getLogger("selftrain")


class StepBatches(torch.utils.data.Sampler):
    """The batches (lists of row indices) of steps `start`, `start` + 1, ... forever: pass k over the `n` rows is
    the permutation drawn from (seed, k), so any step's batch is known without the ones before it and a
    resumed run draws exactly what an uninterrupted one draws. Full batches only, unless n < batch. Under
    torchrun each process gets every `world.size`-th row of each batch, starting at its rank."""

    def __init__(self, n: int, batch: int, seed: int, stream: int, start: int = 0, world: distributed.World = distributed.World()) -> None:
        if n == 0:
            raise ValueError("nothing to train on: the set is empty")
        self.n, self.batch, self.seed, self.stream, self.start, self.world = n, min(batch, n), seed, stream, start, world
        self.per_pass = n // self.batch

    def __len__(self) -> int:
        return self.per_pass

    def __iter__(self) -> Iterator[list[int]]:
        step, cached = self.start, (-1, None)
        while True:
            k, j = divmod(step, self.per_pass)
            if cached[0] != k:
                cached = (k, np.random.default_rng([self.seed, self.stream, k]).permutation(self.n))
            yield cached[1][j * self.batch : (j + 1) * self.batch][self.world.rank :: self.world.size].tolist()
            step += 1


def _loader(images: np.ndarray, targets: np.ndarray, p: TrainParams, batches: StepBatches, seed: int, workers: int):
    ds = ImageDataset(images, targets, pil_policy(p, images.shape[1], images.shape[3]))
    # its own generator: the loader draws its workers' base seed from it, not from torch's global RNG
    return torch.utils.data.DataLoader(
        ds, batch_sampler=batches, num_workers=workers, persistent_workers=workers > 0, worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )


def lr_lambda(total: int, warmup: int):
    """Linear warmup over `warmup` steps, then cosine decay to 0 at `total`."""
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return f


def fit(
    model: nn.Module,
    p: TrainParams,
    labeled: Split,
    device: torch.device,
    seed: int,
    *,
    pseudo: tuple[np.ndarray, np.ndarray] | None = None,
    val: Split | None = None,
    num_workers: int = 0,
    desc: str = "train",
    resume: str | None = None,
    fingerprint: str = "",
    checkpoint_every: int = 0,
) -> tuple[nn.Module, list[dict[str, Any]], int]:
    """Train `model` in place; return the model to keep (it, or its EMA), one log row per epoch and the step it
    resumed from (0: from scratch).

    `pseudo` is (images, target probabilities). With `resume`, the whole state is saved there every
    `checkpoint_every` steps (selftrain.resume) and a run with the same `fingerprint` continues from it.
    Under torchrun, data-parallel over its processes (selftrain.distributed); only rank 0 saves."""
    w = distributed.world()
    if p.batch_size < w.size:
        raise ValueError(f"batch_size {p.batch_size} is smaller than the {w.size} torchrun processes: each needs a share of every batch")
    runtime.seed_everything(seed)
    torch.manual_seed(seed + w.rank)  # dropout and stochastic depth differ between processes (rank 0: as in one process)
    noise_gen = torch.Generator().manual_seed(seed + 1 + 7919 * w.rank)  # batch-level flip/crop, apart from data order
    seed_augmentation(seed + 2 + 7919 * w.rank)
    labeled_batches = StepBatches(len(labeled), p.batch_size, seed, 0, world=w)
    if pseudo is not None:
        assert isinstance(p, StudentParams)
        pseudo_batches = StepBatches(len(pseudo[0]), p.batch_size * p.unlabeled_ratio, seed, 1, world=w)
        steps_per_epoch = pseudo_batches.per_pass
        pseudo_loss = build_loss(p.loss, tau=p.loss_tau, alpha=p.labeled_weight, beta=p.dist_beta, gamma=p.dist_gamma)
        w_l, w_u = pseudo_loss.alpha, p.pseudo_weight
    else:
        steps_per_epoch, w_l, w_u = labeled_batches.per_pass, 1.0, 0.0
    total = steps_per_epoch * p.epochs
    net = distributed.wrap(model, w, device)  # what the training step runs: `model`, or DDP around it
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, int(p.warmup_epochs * steps_per_epoch)))
    # warmup: the decay ramps up with the step count, so short runs still average more than their first steps
    ema = ModelEmaV3(model, decay=p.ema_decay, use_warmup=True) if p.ema_decay else None
    kept = ema.module if ema else model

    start, log, seen, sums = 0, [], 0, np.zeros(4)  # sums: loss, labeled loss, pseudo loss, labeled correct
    blob = resume_state.load(resume, fingerprint, desc) if resume else None
    if blob is not None:
        getattr(model, "_orig_mod", model).load_state_dict(blob["model"])
        opt.load_state_dict(blob["opt"])
        sched.load_state_dict(blob["sched"])
        if ema:
            ema.module.load_state_dict(blob["ema"])
        start, log = blob["step"], list(blob["log"])
        ranks = blob["ranks"]
        if len(ranks) == w.size:  # each process continues its own random streams and running sums
            mine = ranks[w.rank]
            noise_gen.set_state(mine["noise_gen"])
            resume_state.set_rng_state(mine["rng"])
            seen, sums = mine["seen"], np.array(mine["sums"])
        else:  # another world size: the model and schedule carry over; the random streams start anew from the step
            logger.warning("%s: the checkpoint was saved by %d processes, this run has %d: each process's random state is "
                           "drawn anew (the run goes on, but is not bitwise the uninterrupted one)", desc, len(ranks), w.size)
            torch.manual_seed(seed + w.rank + 104729 * start)
            noise_gen.manual_seed(seed + 1 + 7919 * w.rank + 104729 * start)
            seed_augmentation(seed + 2 + 7919 * w.rank + 104729 * start)
        logger.info("%s: resuming from the checkpoint at step %d of %d ('%s')", desc, start, total, resume)
    labeled_batches.start = start
    labeled_iter = iter(_loader(labeled.images, labeled.labels, p, labeled_batches, seed + 3, num_workers))
    pseudo_iter = None
    if pseudo is not None:
        pseudo_batches.start = start
        pseudo_iter = iter(_loader(pseudo[0], pseudo[1], p, pseudo_batches, seed + 4, num_workers))

    bar = tqdm(total=total, initial=start, desc=desc, unit="step", mininterval=2.0)
    model.train()
    t0 = time.perf_counter()
    for step in range(start, total):
        epoch = step // steps_per_epoch + 1
        x_l, y_l = next(labeled_iter)
        x = x_l
        if pseudo_iter is not None:
            x_u, q_u = next(pseudo_iter)
            x = torch.cat([x_l, x_u])
        x = runtime.to_device(train_batch(x.to(device), p.augment, noise_gen), device)
        y_l = y_l.to(device)
        with runtime.autocast(device):
            out = net(x).float()
        loss_l = F.cross_entropy(out[: len(y_l)], y_l, label_smoothing=p.label_smoothing)
        loss = w_l * loss_l
        loss_u = torch.zeros((), device=device)
        if pseudo_iter is not None:
            # the losses take teacher logits: log q is one (softmax(log q) = q); the floor keeps hard labels finite
            loss_u = pseudo_loss(out[len(y_l) :], torch.log(q_u.to(device).float().clamp_min(1e-12)))
            loss = loss + w_u * loss_u
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if ema:
            ema.update(model, step=step + 1)
        seen += len(x)
        correct = (out[: len(y_l)].argmax(1) == y_l).sum()
        sums += np.array([loss.item(), loss_l.item(), loss_u.item(), correct.item() / len(y_l)])
        bar.update()
        bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)
        done = step + 1
        if done % steps_per_epoch == 0:
            sums = distributed.mean(torch.from_numpy(sums), w).numpy()
            row = {
                "epoch": epoch,
                "lr": sched.get_last_lr()[0],
                # plain floats: the log goes into resume files, which hold no numpy objects
                **dict(zip(("loss", "loss_labeled", "loss_pseudo", "train_top1"), (sums / steps_per_epoch).tolist())),
                "images_per_s": seen * w.size / (time.perf_counter() - t0),
            }
            if val is not None:  # blank between checks: the curve is only for the log and its plot
                row["val_top1"] = accuracy(kept, val, 512, device)["top1"] if epoch % p.val_every == 0 or epoch == p.epochs else None
                model.train()
            log.append(row)
            logger.info("%s epoch %d/%d: %s", desc, epoch, p.epochs, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch" and v is not None))
            t0, seen, sums = time.perf_counter(), 0, np.zeros(4)
        if resume and checkpoint_every and done % checkpoint_every == 0 and done < total:
            # every process's own random state and running sums, so that each resumes its own streams (rank 0 writes)
            ranks = distributed.gather({"rng": resume_state.rng_state(), "noise_gen": noise_gen.get_state(),
                                        "seen": seen, "sums": sums.tolist()}, w)
            if w.main:
                resume_state.save(resume, fingerprint, done, {
                    "model": getattr(model, "_orig_mod", model).state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "ema": ema.module.state_dict() if ema else {}, "log": log, "ranks": ranks,
                })
    bar.close()
    return kept, log, start
