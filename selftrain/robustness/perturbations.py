"""-P perturbation sequences (Hendrycks & Dietterich 2019) built from still images.

ImageNet-P's sequences come from video-like renderings at 224 px; here each test image becomes `frames`
frames of one perturbation growing from nothing (frame 0 is the clean image) to its strongest, or, for
the noise kinds, the clean image followed by independent noise draws of one strength; FP compares each
noisy frame with that clean first frame, as Hendrycks' make_cifar_p.py builds and -P scores them.
Tilt is approximated by a shear: a 3-D tilt needs a perspective warp, which a 28-px image cannot show
beyond its shear component.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from selftrain.robustness import image_ops as ops

# One perturbation: clean images (N, C, H, W) in [0, 1], strength t in (0, 1] (frame 0, t = 0, is the clean image),
# per-image draws (N,) in
# [-1, 1) fixed for the sequence, the frame's RNG, spatial scale -> the frame.
Perturbation = Callable[[torch.Tensor, float, np.ndarray, np.random.Generator, float], torch.Tensor]
_REGISTRY: dict[str, Perturbation] = {}


def _register(fn: Perturbation) -> Perturbation:
    _REGISTRY[fn.__name__] = fn
    return fn


def perturbation_sequences(images: np.ndarray, name: str, frames: int, seed: int) -> np.ndarray:
    """(N, H, W, C) uint8 images -> (N, frames, H, W, C) uint8 sequences of perturbation `name`, byte-identical for a
    seed."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}")
    if frames < 2:
        raise ValueError(f"a perturbation sequence needs at least 2 frames, got {frames}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"images must be a non-empty uint8 array (N, H, W, 1 or 3), got {images.dtype} {images.shape}")
    rng = np.random.default_rng([seed, 100 + PERTURBATIONS.index(name)])
    draws = rng.uniform(-1, 1, len(images))
    x = torch.tensor(images).permute(0, 3, 1, 2).float().div(255)
    scale = min(images.shape[1:3]) / 32
    out = [images]  # every sequence starts from the clean image, the noise kinds too (make_cifar_p.py)
    for j in range(1, frames):
        t = j / (frames - 1)
        frame = _REGISTRY[name](x, t, draws, rng, scale)
        out.append(frame.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    return np.stack(out, axis=1)


def _affine(
    x: torch.Tensor, rotate_deg: np.ndarray, shear: np.ndarray, zoom: np.ndarray, shift_px: np.ndarray
) -> torch.Tensor:
    """Per-image rotation, horizontal shear, zoom (> 1 enlarges) and shift (px, (N, 2) as x, y), about the centre."""
    n, _, h, w = x.shape
    rad = np.deg2rad(rotate_deg)
    cos, sin = np.cos(rad), np.sin(rad)
    # the output grid samples the input at M^-1 u: build the inverse directly
    inv = np.zeros((n, 2, 3), dtype=np.float32)
    inv[:, 0, 0], inv[:, 0, 1] = cos / zoom, (sin + shear * cos) / zoom
    inv[:, 1, 0], inv[:, 1, 1] = -sin / zoom, (cos - shear * sin) / zoom
    inv[:, 0, 2] = -2 * shift_px[:, 0] / w
    inv[:, 1, 2] = -2 * shift_px[:, 1] / h
    return ops.warp(x, torch.from_numpy(inv))


def _none(n: int) -> np.ndarray:
    return np.zeros(n)


@_register
def gaussian_noise(
    x: torch.Tensor, t: float, draws: np.ndarray, rng: np.random.Generator, scale: float
) -> torch.Tensor:
    return x + torch.from_numpy(rng.normal(0, 0.06, x.shape).astype(np.float32))


@_register
def shot_noise(x: torch.Tensor, t: float, draws: np.ndarray, rng: np.random.Generator, scale: float) -> torch.Tensor:
    return torch.from_numpy((rng.poisson(x.numpy() * 60) / 60).astype(np.float32))


@_register
def motion_blur(x: torch.Tensor, t: float, draws: np.ndarray, rng: np.random.Generator, scale: float) -> torch.Tensor:
    # from sigma 0.3 px: below that the blur rounds away and the first frames equal the clean one
    return ops.motion_blur(x, 6 * scale, (0.3 + 2.2 * t) * scale, 45 * draws)


@_register
def zoom(x: torch.Tensor, t: float, draws: np.ndarray, rng: np.random.Generator, scale: float) -> torch.Tensor:
    n = len(x)
    return _affine(x, _none(n), _none(n), np.full(n, 1 + 0.4 * t), np.zeros((n, 2)))


@_register
def translate(x: torch.Tensor, t: float, draws: np.ndarray, rng: np.random.Generator, scale: float) -> torch.Tensor:
    n = len(x)
    angle = np.pi * draws
    shift = 5 * scale * t * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return _affine(x, _none(n), _none(n), np.ones(n), shift)


@_register
def rotate(x: torch.Tensor, t: float, draws: np.ndarray, rng: np.random.Generator, scale: float) -> torch.Tensor:
    n = len(x)
    return _affine(x, 30 * t * np.sign(draws), _none(n), np.ones(n), np.zeros((n, 2)))


@_register
def tilt(x: torch.Tensor, t: float, draws: np.ndarray, rng: np.random.Generator, scale: float) -> torch.Tensor:
    n = len(x)
    return _affine(x, _none(n), 0.4 * t * np.sign(draws), np.ones(n), np.zeros((n, 2)))


@_register
def scale(x: torch.Tensor, t: float, draws: np.ndarray, rng: np.random.Generator, scale: float) -> torch.Tensor:
    n = len(x)
    return _affine(x, _none(n), _none(n), np.full(n, 1 - 0.4 * t), np.zeros((n, 2)))


@_register
def brightness(x: torch.Tensor, t: float, draws: np.ndarray, rng: np.random.Generator, scale: float) -> torch.Tensor:
    return ops.raise_value(x, 0.4 * t)


PERTURBATIONS: tuple[str, ...] = tuple(_REGISTRY)
