"""Input pipelines: the clean one (inference, evaluation) and the noised ones (training).

Noise on the input is augmentation (flip+crop, timm's RandAugment); model noise (dropout,
stochastic depth) is set on the timm model itself, see `models.create`.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from torchvision import transforms as T

MEAN, STD = 0.5, 0.5  # images are scaled to [-1, 1]; BatchNorm takes care of the rest


def clean_batch(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> normalised float (N, C, H, W); no augmentation at all."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255)
    return x.sub_(MEAN).div_(STD)


def train_transform(augment: str, randaugment: str | None, image_size: int, channels: int) -> Callable[[Image.Image], torch.Tensor]:
    ops: list[Callable] = []
    if augment == "flip_crop":
        ops += [T.RandomCrop(image_size, padding=max(1, image_size // 14), padding_mode="reflect"), T.RandomHorizontalFlip()]
    if randaugment:
        hparams = {"translate_const": int(image_size * 0.45), "img_mean": (128,) * channels}
        ops.append(rand_augment_transform(randaugment, hparams))
    ops += [T.ToTensor(), T.Normalize([MEAN] * channels, [STD] * channels)]
    return T.Compose(ops)


class ImageDataset(torch.utils.data.Dataset):
    """uint8 images with per-image targets (class ids or probability vectors) through a PIL transform."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, transform: Callable[[Image.Image], torch.Tensor]):
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[i]
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        return self.transform(pil), torch.as_tensor(self.targets[i])
