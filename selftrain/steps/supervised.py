"""The supervised step: cross-entropy on noised labeled batches (the teacher; MPL's student finetune)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from selftrain import distributed, runtime
from selftrain.data import Split
from selftrain.noise import ImageDataset, pil_policy, seed_worker, train_batch
from selftrain.params import TrainParams
from selftrain.steps.base import Step
from selftrain.train import Context, Finished, StepBatches


def image_loader(
    images: np.ndarray, targets: np.ndarray, p: TrainParams, batches: StepBatches, seed: int, workers: int
) -> torch.utils.data.DataLoader:
    """`p`'s per-image (PIL) noise in `workers` processes, batches drawn by `batches`. The loader's generator (its
    workers' base seed) differs by rank, so that under torchrun each process draws its own noise (rank 0: `seed`)."""
    ds = ImageDataset(images, targets, pil_policy(p, images.shape[1], images.shape[3]))
    # its own generator: the loader draws its workers' base seed from it, not from torch's global RNG
    return torch.utils.data.DataLoader(
        ds,
        batch_sampler=batches,
        num_workers=workers,
        persistent_workers=workers > 0,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed + 7919 * batches.world.rank),
    )


class SupervisedStep(Step):
    """labeled_weight * CE(y, f(x_l)) on one labeled batch, AdamW with warmup + cosine decay over p.epochs."""

    def __init__(self, model: nn.Module, p: TrainParams, labeled: Split, ctx: Context, seed: int) -> None:
        distributed.check_shares(p.batch_size, ctx.world, "batch_size")
        super().__init__(ctx)
        self.model = model
        self.p = p
        self.seed = seed
        self.labeled = labeled
        self.noise_gen = torch.Generator()  # batch-level flip/crop, apart from data order
        self.reseed(seed + 7919 * ctx.world.rank)
        self.labeled_batches = StepBatches(len(labeled), p.batch_size, seed, 0, world=ctx.world)
        self.steps_per_epoch = self._steps_per_epoch()
        self.total = self.steps_per_epoch * p.epochs
        warmup = int(p.warmup_epochs * self.steps_per_epoch)
        self.net = self.optimise("model", model, lr=p.lr, weight_decay=p.weight_decay, total=self.total, warmup=warmup)
        self.labeled_weight = 1.0
        self.pseudo_weight = 0.0
        # the loop's schedule: a log row (and every val_every-th a validation) per epoch; checkpoints at
        # runtime's interval
        self.log_every = self.steps_per_epoch
        self.val_every = p.val_every
        self.ema_decay = p.ema_decay

    def _steps_per_epoch(self) -> int:
        return self.labeled_batches.per_pass

    def batches(self, start: int) -> Iterator[Any]:
        self.labeled_batches.start = start
        return iter(
            image_loader(
                self.labeled.images, self.labeled.labels, self.p, self.labeled_batches, self.seed + 3, self.ctx.workers
            )
        )

    def __call__(self, batch: Any) -> dict[str, float]:
        x_l, y_l, *extra = batch  # extra: pseudo-labeled images, their targets[, a consistency batch]
        x = torch.cat([x_l, extra[0]]) if extra else x_l
        device = self.ctx.device
        x = runtime.to_device(train_batch(x.to(device), self.p.augment, self.noise_gen), device)
        y_l = y_l.to(device)
        more = self.consistency_views(extra[2]) if len(extra) > 2 else None
        with self.ctx.autocast():
            out = self.net(
                x if more is None else torch.cat([x, more])
            ).float()  # one pass: BatchNorm sees every view together
        out, tail = out[: len(x)], out[len(x) :]
        loss_l = F.cross_entropy(out[: len(y_l)], y_l, label_smoothing=self.p.label_smoothing)
        loss = self.labeled_weight * loss_l
        loss_u = self.pseudo_loss(out[len(y_l) :], extra[1]) if extra else None
        if loss_u is not None:
            loss = loss + self.pseudo_weight * loss_u
        consistency: dict[str, float] = {}
        if more is not None:
            loss_c, consistency = self.consistency_loss(tail, extra[2])
            loss = loss + loss_c
        self.update(loss, "model")
        correct = (out[: len(y_l)].argmax(1) == y_l).sum()
        return {
            "loss": loss.item(),
            "loss_labeled": loss_l.item(),
            "loss_pseudo": 0.0 if loss_u is None else loss_u.item(),
            "train_top1": correct.item() / len(y_l),
            **consistency,
            "images": len(x) + (0 if more is None else len(more)),
        }

    def finish(self, kept: nn.Module, rows: list[dict[str, Any]], desc: str) -> Finished:
        """The model to save, its logs and files, and what the stage's summary adds: here the epoch log."""
        return kept, {"log.csv": rows}, {}, {"epochs": self.p.epochs}

    def pseudo_loss(self, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of the batch's pseudo-labeled part (selftrain.methods.noisy_student.step); a labeled batch has
        none."""
        raise NotImplementedError

    def consistency_views(self, batch: Any) -> torch.Tensor:
        """A consistency batch's weak and strong views on the device, concatenated
        (selftrain.methods.noisy_student.step)."""
        raise NotImplementedError

    def consistency_loss(self, out: torch.Tensor, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        """The weighted consistency term on those views' outputs, and its logs."""
        raise NotImplementedError

    def rank_state(self) -> dict[str, Any]:
        return {"noise_gen": self.noise_gen.get_state()}

    def load_rank_state(self, state: dict[str, Any]) -> None:
        self.noise_gen.set_state(state["noise_gen"])

    def reseed(self, seed: int) -> None:
        self.noise_gen.manual_seed(seed + 1)
