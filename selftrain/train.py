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

from selftrain import runtime
from selftrain.losses import build_loss
from selftrain.data import Split
from selftrain.evaluate import accuracy
from selftrain.noise import ImageDataset, pil_policy, seed_augmentation, seed_worker, train_batch
from selftrain.params import StudentParams, TrainParams

logger = logging.getLogger("selftrain")


def _loader(images: np.ndarray, targets: np.ndarray, p: TrainParams, batch: int, gen: torch.Generator, workers: int):
    ds = ImageDataset(images, targets, pil_policy(p, images.shape[1], images.shape[3]))
    return torch.utils.data.DataLoader(
        ds, batch_size=batch, shuffle=True, drop_last=len(ds) > batch, generator=gen, num_workers=workers,
        persistent_workers=workers > 0, worker_init_fn=seed_worker,
    )


def _forever(loader: torch.utils.data.DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    while True:  # re-iterating (not itertools.cycle) draws fresh augmentations each pass
        yield from loader


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
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Train `model` in place; return the model to keep (it, or its EMA) and one log row per epoch.

    `pseudo` is (images, target probabilities)."""
    gen = runtime.seed_everything(seed)
    noise_gen = torch.Generator().manual_seed(seed + 1)  # batch-level flip/crop, apart from data order
    seed_augmentation(seed + 2)
    labeled_loader = _loader(labeled.images, labeled.labels, p, p.batch_size, gen, num_workers)
    if pseudo is not None:
        assert isinstance(p, StudentParams)
        pseudo_loader = _loader(pseudo[0], pseudo[1], p, p.batch_size * p.unlabeled_ratio, gen, num_workers)
        steps_per_epoch, pseudo_iter = len(pseudo_loader), _forever(pseudo_loader)
        pseudo_loss = build_loss(p.loss, tau=p.loss_tau, alpha=p.labeled_weight, beta=p.dist_beta, gamma=p.dist_gamma)
        w_l, w_u = pseudo_loss.alpha, p.pseudo_weight
    else:
        steps_per_epoch, pseudo_iter, w_l, w_u = len(labeled_loader), None, 1.0, 0.0
    labeled_iter = _forever(labeled_loader)
    total = steps_per_epoch * p.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(total, int(p.warmup_epochs * steps_per_epoch)))
    # warmup: the decay ramps up with the step count, so short runs still average more than their first steps
    ema = ModelEmaV3(model, decay=p.ema_decay, use_warmup=True) if p.ema_decay else None
    kept = ema.module if ema else model

    log = []
    bar = tqdm(total=total, desc=desc, unit="step", mininterval=2.0)
    for epoch in range(1, p.epochs + 1):
        model.train()
        t0, seen, sums = time.perf_counter(), 0, np.zeros(4)  # loss, labeled loss, pseudo loss, labeled correct
        for _ in range(steps_per_epoch):
            x_l, y_l = next(labeled_iter)
            x = x_l
            if pseudo_iter is not None:
                x_u, q_u = next(pseudo_iter)
                x = torch.cat([x_l, x_u])
            x = runtime.to_device(train_batch(x.to(device), p.augment, noise_gen), device)
            y_l = y_l.to(device)
            with runtime.autocast(device):
                out = model(x).float()
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
                ema.update(model)
            seen += len(x)
            correct = (out[: len(y_l)].argmax(1) == y_l).sum()
            sums += np.array([loss.item(), loss_l.item(), loss_u.item(), correct.item() / len(y_l)])
            bar.update()
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}", refresh=False)
        row = {
            "epoch": epoch,
            "lr": sched.get_last_lr()[0],
            "loss": sums[0] / steps_per_epoch,
            "loss_labeled": sums[1] / steps_per_epoch,
            "loss_pseudo": sums[2] / steps_per_epoch,
            "train_top1": sums[3] / steps_per_epoch,
            "images_per_s": seen / (time.perf_counter() - t0),
        }
        if val is not None:  # blank between checks: the curve is only for the log and its plot
            row["val_top1"] = accuracy(kept, val, 512, device)["top1"] if epoch % p.val_every == 0 or epoch == p.epochs else None
        log.append(row)
        logger.info("%s epoch %d/%d: %s", desc, epoch, p.epochs, ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k != "epoch" and v is not None))
    bar.close()
    return kept, log
