"""Per-step batches of labeled images and weak + strong views of unlabeled ones (MPL, FixMatch).

Step t's data (which images, their augmentations) is drawn from (seed, t) alone, in DataLoader workers, so any
step can be replayed without the ones before it: a resumed run takes exactly the steps an uninterrupted one takes.
Under torchrun every process takes a disjoint share of each step's labeled and unlabeled images.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from selftrain import distributed, runtime
from selftrain.data import Split
from selftrain.noise import ImageDataset, cutout, pil_policy, seed_augmentation, train_batch
from selftrain.params import TrainParams


class StepImages(torch.utils.data.Dataset):
    """Item t: this process's share of step t's batch (`batch_size` labeled, `ratio` times as many unlabeled), its
    per-image (PIL) noise applied; the batch-level flip/crop is left to the training device, with the generator
    seed that comes with the item."""

    def __init__(
        self,
        labeled: Split,
        unlabeled: np.ndarray,
        batch_size: int,
        ratio: int,
        sp: TrainParams,
        seed: int,
        world: distributed.World,
    ) -> None:
        self.labeled = labeled
        self.unlabeled = unlabeled
        self.batch_size = batch_size
        self.ratio = ratio
        self.seed = seed
        self.world = world
        distributed.check_shares(min(batch_size, len(labeled)), world, f"a step's labeled batch (of {len(labeled)})")
        unlabeled_batch = min(batch_size * ratio, len(unlabeled))
        distributed.check_shares(unlabeled_batch, world, f"a step's unlabeled batch (of {len(unlabeled)})")
        self.strong = pil_policy(sp, unlabeled.shape[1], unlabeled.shape[3])

    def __len__(self) -> int:
        return 2**62  # one item per step, however many: the sampler says which

    def __getitem__(self, step: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, step])
        rows_l = rng.choice(len(self.labeled), min(self.batch_size, len(self.labeled)), replace=False)
        rows_u = rng.choice(len(self.unlabeled), min(self.batch_size * self.ratio, len(self.unlabeled)), replace=False)
        augment_seed, flip_seed = int(rng.integers(2**32)), int(rng.integers(2**63))
        rank, size = self.world.rank, self.world.size
        rows_l, rows_u = rows_l[rank::size], rows_u[rank::size]
        seed_augmentation(augment_seed + 7919 * rank)
        images_u = self.unlabeled[rows_u]
        return {
            "x_l": _stack(self.labeled.images[rows_l], None),  # labeled, weak view (flip + crop)
            "y_l": torch.from_numpy(self.labeled.labels[rows_l]).long(),
            "x_uw": _stack(images_u, None),  # unlabeled, weak view (the target's)
            "x_us": _stack(
                images_u, self.strong
            ),  # the same images, strong view: the student's noise (RandAugment + flip + crop)
            "rows_u": torch.from_numpy(rows_u),
            "flip_seed": (flip_seed + rank) % 2**63,
        }


def _stack(images: np.ndarray, pil: Any) -> torch.Tensor:
    ds = ImageDataset(images, np.zeros(len(images)), pil)
    return torch.stack([ds[i][0] for i in range(len(ds))])


class _Steps(torch.utils.data.Sampler):
    """[start], [start + 1], ...: one item (a whole step's batch) per loader batch."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[list[int]]:
        t = self.start
        while True:
            yield [t]
            t += 1


def _first(items: list[dict[str, Any]]) -> dict[str, Any]:
    return items[0]


def step_loader(images: StepImages, start: int, workers: int) -> Iterator[dict[str, Any]]:
    """Steps start, start + 1, ... of `images`, built in `workers` processes."""
    return iter(
        torch.utils.data.DataLoader(
            images,
            batch_sampler=_Steps(start),
            collate_fn=_first,
            num_workers=workers,
            persistent_workers=workers > 0,
            # else the loader draws its workers' base seed from torch's global RNG (dropout's)
            generator=torch.Generator(),
        )
    )


def on_device(
    b: dict[str, Any], sp: TrainParams, device: torch.device, cutout_frac: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch on the device, flipped and cropped (the strong view by the student's policy, then Cutout of up to
    `cutout_frac` of the side): labeled, its labels, unlabeled weak, unlabeled strong."""
    gen = torch.Generator().manual_seed(b["flip_seed"])
    x_l, x_uw, x_us = (
        runtime.to_device(train_batch(b[k].to(device), policy, gen), device)
        for k, policy in (("x_l", "s1"), ("x_uw", "s1"), ("x_us", sp.augment))
    )
    if cutout_frac > 0:
        x_us = cutout(x_us, cutout_frac, gen)
    return x_l, b["y_l"].to(device), x_uw, x_us
