"""Data: split the embedded Fashion-MNIST or your folders into labeled, unlabeled, val, test (and holdout)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from selftrain import artifacts
from selftrain.data import save_split
from selftrain.data.splits import read_splits
from selftrain.params import Params

log = logging.getLogger("selftrain")


def prepare(params: Params, *, out: str) -> dict[str, Any]:
    """Split the data (embedded Fashion-MNIST or your folders) into labeled, unlabeled, val and test, by seed.

    Your folders are checked whole before anything is written: every bad file or folder is named at once
    (`selftrain check-data` does only that); `data.skip_bad: true` leaves the bad files out instead and
    lists them in summary.json's `skipped`."""
    splits, skipped = read_splits(params.data, params.seed)
    summary = {
        "source": params.data.source,
        "classes": list(splits["labeled"].classes),
        "image_shape": list(splits["labeled"].images.shape[1:]),
        "sizes": {name: len(s) for name, s in splits.items()},
        "labeled_per_class": np.bincount(splits["labeled"].labels, minlength=len(splits["labeled"].classes)).tolist(),
        "skipped": [{"path": p.path, "reason": p.reason} for p in skipped],
    }
    with artifacts.atomic_dir(out) as staging:
        for name in splits:
            save_split(artifacts.join(staging, f"{name}.npz"), splits[name])
        artifacts.write_json(artifacts.join(staging, "summary.json"), summary)
    log.info("prepare: %s", summary["sizes"])
    return summary
