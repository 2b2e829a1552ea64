"""Batched image operations shared by the -C corruptions and the -P perturbations: (N, C, H, W) float tensors."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) with edge replication, like skimage.filters.gaussian."""
    radius = int(truncate * sigma + 0.5)
    if sigma <= 0 or radius == 0:
        return x
    k = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    n, c, h, w = x.shape
    y = x.reshape(n * c, 1, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return y.reshape(n, c, h, w)


def warp(x: torch.Tensor, theta: torch.Tensor, padding: str = "border") -> torch.Tensor:
    """Sample x at affine(theta) of the output grid (normalised coordinates), bilinear."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def zoom(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Zoom into the centre by `factor` >= 1, keeping the size (-C's clipped_zoom)."""
    theta = torch.tensor([[1 / factor, 0, 0], [0, 1 / factor, 0]]).expand(len(x), 2, 3)
    return warp(x, theta)


def motion_blur(x: torch.Tensor, radius: float, sigma: float, angles_deg: np.ndarray) -> torch.Tensor:
    """ImageMagick's one-sided motion blur: Gaussian-weighted taps 0..2*radius px along each image's angle."""
    taps = np.arange(int(2 * math.ceil(radius) + 1))
    weights = np.exp(-(taps**2) / (2 * sigma**2))
    weights /= weights.sum()
    rad = np.deg2rad(angles_deg)
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    for i, wt in zip(taps, weights):
        if wt < 1e-4:
            break
        # a shift of i pixels along the angle, in normalised units (2 / size per pixel)
        theta = np.zeros((len(x), 2, 3), dtype=np.float32)
        theta[:, 0, 0] = theta[:, 1, 1] = 1
        theta[:, 0, 2] = 2 * i * np.cos(rad) / w
        theta[:, 1, 2] = 2 * i * np.sin(rad) / h
        out += float(wt) * warp(x, torch.from_numpy(theta))
    return out / float(weights[weights >= 1e-4].sum())


def plasma(n: int, size: int, decay: float, rng: np.random.Generator) -> torch.Tensor:
    """Diamond-square fractal height maps (n, size, size) in [0, 1]; size rounds up to a power of two.

    The -C authors' fog (plasma_fractal) is a single-image loop; this draws a batch at once.
    """
    m = 1 << max(1, math.ceil(math.log2(size)))
    a = np.zeros((n, m, m))
    step, wibble = m, 100.0
    while step >= 2:
        half = step // 2
        corners = a[:, 0:m:step, 0:m:step]
        # squares: centre = mean of 4 corners + noise
        s = corners + np.roll(corners, -1, axis=1)
        s = s + np.roll(s, -1, axis=2)
        a[:, half:m:step, half:m:step] = s / 4 + rng.uniform(-wibble, wibble, s.shape)
        # diamonds: edge midpoints = mean of the 2 corners and 2 centres around them + noise
        centres = a[:, half:m:step, half:m:step]
        d = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        a[:, 0:m:step, half:m:step] = d / 4 + rng.uniform(-wibble, wibble, d.shape)
        d = centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        a[:, half:m:step, 0:m:step] = d / 4 + rng.uniform(-wibble, wibble, d.shape)
        step, wibble = half, wibble / decay
    a -= a.min(axis=(1, 2), keepdims=True)
    a /= a.max(axis=(1, 2), keepdims=True)
    return torch.from_numpy(a[:, :size, :size].astype(np.float32))


def gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def raise_value(x: torch.Tensor, c: float) -> torch.Tensor:
    """Add c to the HSV value keeping hue and saturation: RGB scales with V (black becomes gray)."""
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(0, 1)
    return torch.where(v > 0, x * v_new / v.clamp_min(1e-8), v_new.expand_as(x))
