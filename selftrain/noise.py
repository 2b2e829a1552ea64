"""Input pipelines: the clean one (inference, evaluation) and the noised one (training).

Input noise is a named policy (`POLICIES`, the s1-s4 ladder): AutoAugment or RandAugment
(timm's, per image on PIL, in the Dataset), then random flip + scale jitter + crop on whole
batches as one affine grid_sample on the training device: per-image PIL cropping cost more
than a quarter of a CPU training step at 28x28. Model noise (dropout, stochastic depth)
is set on the timm model itself, see `models.create`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import timm.data.auto_augment
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data.auto_augment import auto_augment_transform, rand_augment_transform

from selftrain.inputs import normalize
from selftrain.params import TrainParams

# timm's AutoAugment and RandAugment draw from the module-global `random`, which other threads in the same
# process also draw from (Prefect's, when a stage runs as an in-process task): training would
# then differ run to run. Give timm's augmentations a private generator that the loop seeds.
_AUGMENT_RNG = random.Random(0)
_OP_CHOICE_RNG = np.random.default_rng(0)
# a module attribute, swapped for a generator of ours
timm.data.auto_augment.random = _AUGMENT_RNG  # type: ignore[assignment]


def seed_augmentation(seed: int) -> None:
    global _OP_CHOICE_RNG
    _AUGMENT_RNG.seed(seed)
    _OP_CHOICE_RNG = np.random.default_rng(seed)


def augmentation_state() -> dict:
    """The augmentations' generators, as plain values (selftrain.resume saves them)."""
    version, internal, gauss = _AUGMENT_RNG.getstate()
    return {"random": [version, list(internal), gauss], "op_choice": _OP_CHOICE_RNG.bit_generator.state}


def set_augmentation_state(state: dict) -> None:
    version, internal, gauss = state["random"]
    _AUGMENT_RNG.setstate((version, tuple(internal), gauss))
    _OP_CHOICE_RNG.bit_generator.state = state["op_choice"]


def seed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: a distinct, reproducible augmentation stream per worker."""
    seed_augmentation(torch.initial_seed() % 2**32)


@dataclass(frozen=True)
class Policy:
    """One rung of the augmentation ladder: a per-image PIL policy, then flip + crop with scale jitter."""

    pil: Literal["autoaugment", "randaugment"] | None
    scale: tuple[float, float] | None  # None: no flip, no crop


# The ladder of Zoph et al. 2020 (Rethinking Pre-training and Self-training), scaled to the image:
# the crop is always the image size, the jitter is relative to it.
POLICIES: dict[str, Policy] = {
    "none": Policy(None, None),
    "s1": Policy(None, (0.8, 1.2)),  # flip + crop (scale jitter 0.8-1.2)
    "s2": Policy("autoaugment", (0.8, 1.2)),  # AutoAugment + flip + crop
    "s3": Policy("autoaugment", (0.5, 2.0)),  # large scale jitter + AutoAugment + flip + crop
    "s4": Policy("randaugment", (0.5, 2.0)),  # RandAugment + flip + crop + large scale jitter
    # Noisy Student's own input noise (Xie et al. 2020): RandAugment + flip + crop, no large scale jitter
    "noisy_student": Policy("randaugment", (0.8, 1.2)),
}


def flip_crop(x: torch.Tensor, scale: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    """Random flip, rescale by U(scale) and crop (zero-padded, shifted up to size/14 more) of a whole batch.

    One affine grid_sample for the batch. Shifts are whole output pixels, so at scale 1
    the output is an exact shifted copy of the input (no interpolation blur).
    """
    n, _, h, w = x.shape
    pad = max(1, h // 14)
    s = torch.empty(n).uniform_(*scale, generator=generator)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = flip / s, 1 / s
    for axis, size in ((0, w), (1, h)):
        reach = ((s - 1).abs() * size / 2 + pad).floor()  # how far (output pixels) the crop may move
        shift = (torch.rand(n, generator=generator) * (2 * reach + 1)).floor() - reach
        theta[:, axis, 2] = shift * 2 / (size * s)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False).to(x.device)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def train_batch(x: torch.Tensor, policy: str, generator: torch.Generator) -> torch.Tensor:
    """uint8 (N, C, H, W) on the training device -> flipped/cropped/jittered, normalised float batch."""
    scale = POLICIES[policy].scale
    if scale is not None:
        x = flip_crop(x, scale, generator)
    return normalize(x)


def cutout(x: torch.Tensor, frac: float, generator: torch.Generator) -> torch.Tensor:
    """Cutout (DeVries & Taylor 2017) as FixMatch's strong view ends: per image, a square of side U(0, frac) of the
    image, centred anywhere (clipped at the border), set to 0, the mid-grey of the normalised range. Written here
    because timm's RandomErasing and torchvision's draw from process-global generators, and a step's noise must
    come from its own (a resumed run replays it)."""
    n, _, h, w = x.shape
    side = torch.rand(n, generator=generator) * frac * min(h, w)
    cy, cx = torch.rand(n, generator=generator) * h, torch.rand(n, generator=generator) * w
    ys, xs = torch.arange(h) + 0.5, torch.arange(w) + 0.5
    inside_y = (ys[None, :] - cy[:, None]).abs() < side[:, None] / 2
    inside_x = (xs[None, :] - cx[:, None]).abs() < side[:, None] / 2
    hole = (inside_y[:, :, None] & inside_x[:, None, :])[:, None].to(x.device)
    return x.masked_fill(hole, 0.0)


def pil_policy(p: TrainParams, image_size: int, channels: int) -> Callable[[Image.Image], Image.Image] | None:
    """The per-image PIL part of `p.augment` (AutoAugment or RandAugment), or None."""
    kind = POLICIES[p.augment].pil
    if kind == "randaugment" and p.randaugment_layers > 0:
        config = f"rand-m{p.randaugment_magnitude:g}-n{p.randaugment_layers}-mstd{p.randaugment_magnitude_std:g}"
        return randaugment(config, image_size, channels)
    if kind == "autoaugment":
        return auto_augment_transform("original-mstd0.5", _hparams(image_size, channels))
    return None


def _hparams(image_size: int, channels: int) -> dict:
    return {"translate_const": int(image_size * 0.45), "img_mean": (128,) * channels}


def randaugment(config: str, image_size: int, channels: int) -> Callable[[Image.Image], Image.Image]:
    """timm's RandAugment for `config` (e.g. rand-m9-n2-mstd0.5), its op choice drawn from the private generator."""
    ra = rand_augment_transform(config, _hparams(image_size, channels))

    def apply(img: Image.Image) -> Image.Image:
        # timm's own __call__ picks ops with numpy's global generator; same choice, private generator
        picks = _OP_CHOICE_RNG.choice(
            len(ra.ops), ra.num_layers, replace=ra.choice_weights is None, p=ra.choice_weights
        )
        for i in picks:
            img = ra.ops[i](img)
        return img

    return apply


class ImageDataset(torch.utils.data.Dataset):
    """uint8 images with per-image targets (class ids or probability vectors), RandAugment'ed when given one."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, pil_noise: Callable[[Image.Image], Image.Image] | None):
        self.images = images
        self.targets = targets
        self.pil_noise = pil_noise

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[i]
        if self.pil_noise is not None:
            pil = self.pil_noise(Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img))
            img = np.array(pil).reshape(img.shape)
        return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1), torch.as_tensor(self.targets[i])
