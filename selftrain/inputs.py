"""Images as every model takes them, with no augmentation: uint8 (N, H, W, C) -> normalised float (N, C, H, W).

Apart from selftrain.noise (which imports timm for its augmentations), so that inference and the robustness sets
do not import timm.
"""

from __future__ import annotations

import numpy as np
import torch

MEAN, STD = 0.5, 0.5  # images are scaled to [-1, 1]; BatchNorm takes care of the rest


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (or float 0..255) (N, C, H, W) -> float in [-1, 1]."""
    return x.float().div_(255).sub_(MEAN).div_(STD)


def clean_batch(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) -> normalised float (N, C, H, W); no augmentation at all."""
    return normalize(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2))
