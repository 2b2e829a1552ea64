"""Input pipelines: the clean one (inference, evaluation) and the noised one (training).

Input noise is RandAugment (timm's, per image on PIL, in the Dataset) followed by random
flip + pad-crop, done on whole batches as one tensor gather, on the training device: per-image
PIL cropping cost more than a quarter of a CPU training step at 28x28. Model noise (dropout,
stochastic depth) is set on the timm model itself, see `models.create`.
"""
from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import timm.data.auto_augment
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.auto_augment import rand_augment_transform

# timm's RandAugment draws from the module-global `random`, which other threads in the same
# process also draw from (Prefect's, when a stage runs as an in-process task): training would
# then differ run to run. Give timm's augmentations a private generator that the loop seeds.
_AUGMENT_RNG = random.Random(0)
_OP_CHOICE_RNG = np.random.default_rng(0)
timm.data.auto_augment.random = _AUGMENT_RNG


def seed_augmentation(seed: int) -> None:
    global _OP_CHOICE_RNG
    _AUGMENT_RNG.seed(seed)
    _OP_CHOICE_RNG = np.random.default_rng(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: a distinct, reproducible augmentation stream per worker."""
    seed_augmentation(torch.initial_seed() % 2**32)

MEAN, STD = 0.5, 0.5  # images are scaled to [-1, 1]; BatchNorm takes care of the rest


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (or float 0..255) (N, C, H, W) -> float in [-1, 1]."""
    return x.float().div_(255).sub_(MEAN).div_(STD)


def clean_batch(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> normalised float (N, C, H, W); no augmentation at all."""
    return normalize(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))


def flip_crop(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and reflect-padded random crop (pad = size/14) of a whole batch at once."""
    n, c, h, w = x.shape
    pad = max(1, h // 14)
    padded = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect")
    oy, ox = (torch.randint(0, 2 * pad + 1, (n,), generator=generator) for _ in range(2))
    rows = oy[:, None] + torch.arange(h)
    cols = ox[:, None] + torch.arange(w)
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    dev = x.device
    return padded[
        torch.arange(n, device=dev)[:, None, None, None],
        torch.arange(c, device=dev)[None, :, None, None],
        rows.to(dev)[:, None, :, None],
        cols.to(dev)[:, None, None, :],
    ]


def train_batch(x: torch.Tensor, augment: str, generator: torch.Generator) -> torch.Tensor:
    """uint8 (N, C, H, W) on the training device -> noised, normalised float batch."""
    if augment == "flip_crop":
        x = flip_crop(x, generator)
    return normalize(x)


def randaugment(config: str, image_size: int, channels: int) -> Callable[[Image.Image], Image.Image]:
    """timm's RandAugment for `config` (e.g. rand-m9-n2-mstd0.5), its op choice drawn from the private generator."""
    ra = rand_augment_transform(config, {"translate_const": int(image_size * 0.45), "img_mean": (128,) * channels})

    def apply(img: Image.Image) -> Image.Image:
        # timm's own __call__ picks ops with numpy's global generator; same choice, private generator
        picks = _OP_CHOICE_RNG.choice(len(ra.ops), ra.num_layers, replace=ra.choice_weights is None, p=ra.choice_weights)
        for i in picks:
            img = ra.ops[i](img)
        return img

    return apply


class ImageDataset(torch.utils.data.Dataset):
    """uint8 images with per-image targets (class ids or probability vectors), RandAugment'ed when given one."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, pil_noise: Callable[[Image.Image], Image.Image] | None):
        self.images, self.targets, self.pil_noise = images, targets, pil_noise

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[i]
        if self.pil_noise is not None:
            pil = self.pil_noise(Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img))
            img = np.array(pil).reshape(img.shape)
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), torch.as_tensor(self.targets[i])
