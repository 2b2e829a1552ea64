"""The 15 common corruptions of ImageNet-C (Hendrycks & Dietterich 2019) at 5 severities, at small-image scale.

Severities: the -C authors' CIFAR-scale parameters (their `make_cifar_c.py`), spatial ones (blur radii,
warp sizes) scaled by image size / 32, so 28-px Fashion-MNIST gets 0.875 of each. Three groups differ,
because at CIFAR's values a model trained on 28-px grayscale images lost nothing with severity
(test_corruptions measures it): noise (gaussian, shot, impulse) and JPEG quality take ImageNet-C's values,
which do not depend on image size; pixelate's kept fraction spans ImageNet-C's range, spaced so that
no two severities give the same block grid at 28 px; elastic's affine jitter rises with severity
(CIFAR's falls, so its severity 1 was the hardest).

Written by hand, not with the `imagecorruptions` package: it hard-codes ImageNet-scale spatial
severities (blur radii and warps for 224 px) that wash small images out, and it needs OpenCV,
scikit-image, SciPy and ImageMagick. Here PIL does JPEG and pixelate; blurs and warps are torch ops
on the whole batch. Two more departures from -C, both forced: the frost layer is synthesised (its
frost photographs ship with no package), and glass blur draws its pixel offsets symmetrically
(-C's `randint(-d, d)` never moves a pixel right or down).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from selftrain.robustness import image_ops as ops

SEVERITIES = (1, 2, 3, 4, 5)
# One corruption: float images (N, C, H, W) in [0, 1], severity index 0-4, the RNG, spatial scale -> images.
Corruption = Callable[[torch.Tensor, int, np.random.Generator, float], torch.Tensor]
_REGISTRY: dict[str, Corruption] = {}


def _register(fn: Corruption) -> Corruption:
    _REGISTRY[fn.__name__] = fn
    return fn


def corrupt(images: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """`images` (N, H, W, C) uint8 under corruption `name` at `severity` 1-5: same dtype and shape, byte-identical for a
    seed."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be 1-5, got {severity}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3) or len(images) == 0:
        raise ValueError(f"images must be a non-empty uint8 array (N, H, W, 1 or 3), got {images.dtype} {images.shape}")
    # an RNG per (seed, corruption, severity): a set does not depend on which others were built before it
    rng = np.random.default_rng([seed, CORRUPTIONS.index(name), severity])
    x = torch.tensor(images).permute(0, 3, 1, 2).float().div(255)
    out = _REGISTRY[name](x, severity - 1, rng, min(images.shape[1:3]) / 32)
    out = out.clamp(0, 1).mul(255).round().to(torch.uint8)
    return out.permute(0, 2, 3, 1).contiguous().numpy()


# ---- helpers ------------------------------------------------------------------------------------


def _noise(rng: np.random.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(rng.random(shape, dtype=np.float32))


def _pil_roundtrip(x: torch.Tensor, fn: Callable[[Image.Image], Image.Image]) -> torch.Tensor:
    arr = x.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out = []
    for img in arr:
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        res = np.asarray(fn(pil), dtype=np.uint8)
        out.append(res.reshape(img.shape))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().div(255)


# ---- noise --------------------------------------------------------------------------------------


@_register
def gaussian_noise(x: torch.Tensor, s: int, rng: np.random.Generator, scale: float) -> torch.Tensor:
    c = [0.08, 0.12, 0.18, 0.26, 0.38][s]
    return x + torch.from_numpy(rng.normal(0, c, x.shape).astype(np.float32))


@_register
def shot_noise(x: torch.Tensor, s: int, rng: np.random.Generator, scale: float) -> torch.Tensor:
    c = [60, 25, 12, 5, 3][s]
    return torch.from_numpy((rng.poisson(x.numpy() * c) / c).astype(np.float32))


@_register
def impulse_noise(x: torch.Tensor, s: int, rng: np.random.Generator, scale: float) -> torch.Tensor:
    c = [0.03, 0.06, 0.09, 0.17, 0.27][s]
    hit = _noise(rng, x.shape) < c
    salt = (_noise(rng, x.shape) < 0.5).float()
    return torch.where(hit, salt, x)


# ---- blur ---------------------------------------------------------------------------------------


@_register
def defocus_blur(x: torch.Tensor, s: int, rng: np.random.Generator, scale: float) -> torch.Tensor:
    radius, alias = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)][s]
    radius *= scale
    r = math.ceil(radius) + 1
    # each kernel pixel weighted by the share of it inside the disk (8x8 subsamples): -C's pixel-centre
    # test jumps at integer radii, which after scaling to 28 px left severity 4 (radius 0.875) a no-op
    sub = (np.arange(8) + 0.5) / 8 - 0.5
    pts = np.arange(-r, r + 1)[:, None] + sub[None, :]  # (2r+1, 8) subsample coordinates per pixel
    inside = (pts[:, None, :, None] ** 2 + pts[None, :, None, :] ** 2) <= radius**2
    disk = inside.mean(axis=(2, 3)).astype(np.float32)
    disk /= disk.sum()
    # then -C's anti-aliasing: a 3x3 Gaussian of sigma `alias` (cv2.GaussianBlur(ksize=3))
    g = np.exp(-(np.array([-1.0, 0.0, 1.0]) ** 2) / (2 * alias**2))
    g /= g.sum()
    kernel = torch.from_numpy(disk)[None, None]
    kernel = F.conv2d(
        F.pad(kernel, (1, 1, 1, 1)), torch.from_numpy(np.outer(g, g).astype(np.float32))[None, None], padding=0
    )
    kernel = kernel / kernel.sum()
    n, c, h, w = x.shape
    k = kernel.shape[-1] // 2
    y = F.conv2d(F.pad(x.reshape(n * c, 1, h, w), (k, k, k, k), mode="reflect"), kernel)
    return y.reshape(n, c, h, w)


@_register
def glass_blur(x: torch.Tensor, s: int, rng: np.random.Generator, scale: float) -> torch.Tensor:
    sigma, delta, iterations = [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)][s]
    sigma *= scale
    delta = max(1, round(delta * scale))
    a = ops.gaussian_blur(x, sigma).permute(0, 2, 3, 1).numpy().copy()
    n, h, w, _ = a.shape
    rows = np.arange(n)
    offsets = rng.integers(-delta, delta + 1, size=(iterations, h, w, 2, n))
    # -C swaps each pixel with a random neighbour, in a fixed sequential order; the sequence is kept
    # (a swap can move a pixel again later), done for all images at once
    for it in range(iterations):
        for i in range(h - 1 - delta, delta - 1, -1):
            for j in range(w - 1 - delta, delta - 1, -1):
                di, dj = offsets[it, i, j]
                here = a[rows, i, j].copy()
                a[rows, i, j] = a[rows, i + di, j + dj]
                a[rows, i + di, j + dj] = here
    return ops.gaussian_blur(torch.from_numpy(a).permute(0, 3, 1, 2), sigma)


@_register
def motion_blur(x: torch.Tensor, s: int, rng: np.random.Generator, scale: float) -> torch.Tensor:
    radius, sigma = [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)][s]
    return ops.motion_blur(x, radius * scale, sigma * scale, rng.uniform(-45, 45, len(x)))


@_register
def zoom_blur(x: torch.Tensor, s: int, rng: np.random.Generator, scale: float) -> torch.Tensor:
    top = [0.06, 0.11, 0.16, 0.21, 0.26][s]
    factors = np.arange(1, 1 + top, 0.01)
    out = x.clone()
    for f in factors:
        out += ops.zoom(x, float(f))
    return out / (len(factors) + 1)


# ---- weather ------------------------------------------------------------------------------------


@_register
def snow(x: torch.Tensor, s: int, rng: np.random.Generator, scale: float) -> torch.Tensor:
    loc, spread, zoom, cut, radius, sigma, keep = [
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ][s]
    n, _, h, w = x.shape
    flakes = torch.from_numpy(rng.normal(loc, spread, (n, 1, h, w)).astype(np.float32))
    flakes = ops.zoom(flakes, zoom)
    flakes = torch.where(flakes < cut, torch.zeros_like(flakes), flakes).clamp(0, 1)
    flakes = ops.motion_blur(flakes, radius * scale, sigma * scale, rng.uniform(-135, -45, n))
    x = keep * x + (1 - keep) * torch.maximum(x, ops.gray(x) * 1.5 + 0.5)
    return x + flakes + flakes.flip(-1, -2)


def _frost_layer(n: int, h: int, w: int, rng: np.random.Generator) -> torch.Tensor:
    """Synthetic frost: a rough fractal haze plus short bright crystal streaks, in [0, 1].

    -C crops photographs of frosted glass, which no package ships; this stands in for them.
    """
    haze = ops.plasma(n, max(h, w), 1.4, rng)[:, None, :h, :w]
    seeds = (_noise(rng, (n, 1, h, w)) < 0.12).float()
    streaks = ops.motion_blur(seeds, 3, 1.5, rng.uniform(0, 360, n)) * 3
    return (0.55 * haze + streaks).clamp(0, 1)


@_register
def frost(x: torch.Tensor, s: int, rng: np.random.Generator, scale: float) -> torch.Tensor:
    keep, add = [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)][s]
    n, _, h, w = x.shape
    return keep * x + add * _frost_layer(n, h, w, rng)


@_register
def fog(x: torch.Tensor, s: int, rng: np.random.Generator, scale: float) -> torch.Tensor:
    amount, decay = [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)][s]
    n, _, h, w = x.shape
    top = x.amax(dim=(1, 2, 3), keepdim=True)
    x = x + amount * ops.plasma(n, max(h, w), decay, rng)[:, None, :h, :w]
    return x * top / (top + amount)


@_register
def brightness(x: torch.Tensor, s: int, rng: np.random.Generator, scale: float) -> torch.Tensor:
    return ops.raise_value(x, [0.05, 0.1, 0.15, 0.2, 0.3][s])


# ---- digital ------------------------------------------------------------------------------------


@_register
def contrast(x: torch.Tensor, s: int, rng: np.random.Generator, scale: float) -> torch.Tensor:
    c = [0.75, 0.5, 0.4, 0.3, 0.15][s]
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * c + mean


@_register
def elastic_transform(x: torch.Tensor, s: int, rng: np.random.Generator, scale: float) -> torch.Tensor:
    n, _, h, w = x.shape
    size = min(h, w)
    alpha, sigma, jitter = (
        size * f for f in [(0, 0, 0.03), (0.05, 0.2, 0.05), (0.08, 0.06, 0.06), (0.1, 0.04, 0.07), (0.1, 0.03, 0.08)][s]
    )
    # a random affine: three points around the centre each moved by up to `jitter` px
    centre, half = size // 2, size // 3
    src = np.array(
        [[centre + half, centre + half], [centre + half, centre - half], [centre - half, centre - half]],
        dtype=np.float64,
    )
    dst = src + rng.uniform(-jitter, jitter, (n, 3, 2))
    # output pixel p samples the input at A p + b, the inverse of the src -> dst map (as cv2.warpAffine does)
    ones = np.ones((n, 3, 1))
    inv = np.linalg.solve(np.concatenate([dst, ones], axis=2), np.broadcast_to(src, (n, 3, 2)))  # (n, 3, 2): [A^T; b]
    a_mat, b = inv[:, :2].transpose(0, 2, 1), inv[:, 2]
    # the same map in normalised coordinates (align_corners=False: u = (2 p + 1) / size - 1)
    sz = np.array([w, h], dtype=np.float64)
    theta = np.zeros((n, 2, 3))
    theta[:, :, :2] = a_mat * sz[None, None, :] / sz[None, :, None]
    theta[:, :, 2] = (a_mat @ (sz - 1) + 2 * b + 1) / sz - 1
    x = ops.warp(x, torch.from_numpy(theta.astype(np.float32)), padding="reflection")
    if alpha == 0:
        return x
    # then a smooth random displacement field of up to `alpha` px
    field = torch.from_numpy(rng.uniform(-1, 1, (n, 2, h, w)).astype(np.float32))
    field = ops.gaussian_blur(field, sigma, truncate=3) * alpha
    base = F.affine_grid(torch.eye(2, 3).expand(n, 2, 3), [n, 1, h, w], align_corners=False)
    grid = base + field.permute(0, 2, 3, 1) * torch.tensor([2 / w, 2 / h])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


@_register
def pixelate(x: torch.Tensor, s: int, rng: np.random.Generator, scale: float) -> torch.Tensor:
    c = [0.6, 0.45, 0.35, 0.22, 0.18][s]
    h, w = x.shape[-2:]
    return _pil_roundtrip(
        x, lambda im: im.resize((int(w * c), int(h * c)), Image.Resampling.BOX).resize((w, h), Image.Resampling.BOX)
    )


@_register
def jpeg_compression(x: torch.Tensor, s: int, rng: np.random.Generator, scale: float) -> torch.Tensor:
    quality = [25, 18, 15, 10, 7][s]

    def roundtrip(im: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue()))

    return _pil_roundtrip(x, roundtrip)


CORRUPTIONS: tuple[str, ...] = tuple(_REGISTRY)
