"""The -A set: natural images that a fixed reference classifier gets wrong (adversarial filtering).

ImageNet-A keeps web images that ResNet-50s misclassify; here the pool is held-out labeled images
(never used for training, val or test) and the filter is the reference checkpoint. The set is built
once per (pool, reference) and frozen as an artifact, so later generations face the same images.
"""

from __future__ import annotations

import numpy as np


def select_hard(labels: np.ndarray, predictions: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted rows of the pool the reference predicts wrongly; at most `size`, drawn by seed when there are more."""
    if labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} differ in shape")
    wrong = np.flatnonzero(labels != predictions)
    if len(wrong) == 0:
        raise ValueError(
            f"the reference model classifies all {len(labels)} pool images correctly: no -A set can be built; use a "
            "larger pool"
        )
    if len(wrong) > size:
        wrong = np.random.default_rng([seed, 200]).choice(wrong, size=size, replace=False)
    return np.sort(wrong)
