"""prepare: split the embedded Fashion-MNIST or your folders into labeled, unlabeled, val, test (and holdout)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from selftrain import artifacts
from selftrain.data import DataError, save_split
from selftrain.data.folders import printable
from selftrain.data.splits import listing as list_input
from selftrain.data.splits import read_splits
from selftrain.params import Params

log = logging.getLogger("selftrain")


def run(params: Params, *, listing: str | None = None, out: str) -> dict[str, Any]:
    """Split the data (embedded Fashion-MNIST or your folders) into labeled, unlabeled, val and test, by seed.

    Your folders are checked whole before anything is written: every bad file or folder is named at once
    (`selftrain check-data` does only that); `data.skip_bad: true` leaves the bad files out instead and
    lists them in summary.json's `skipped`. With `listing` (list-data's output), the data must still be what
    it lists: files that changed since would make the splits differ from what DVC or Prefect recorded."""
    if listing is not None and artifacts.read_json(listing) != list_input(params.data):
        raise DataError(
            f"the input data changed since list-data wrote {listing}: run list-data again (dvc repro does), then "
            "prepare"
        )
    splits, skipped = read_splits(params.data, params.seed)
    summary = {
        "source": params.data.source,
        "classes": list(splits["labeled"].classes),
        "image_shape": list(splits["labeled"].images.shape[1:]),
        "sizes": {name: len(s) for name, s in splits.items()},
        "labeled_per_class": np.bincount(splits["labeled"].labels, minlength=len(splits["labeled"].classes)).tolist(),
        "skipped": [{"path": printable(p.path), "reason": p.reason} for p in skipped],
    }
    with artifacts.atomic_dir(out) as staging:
        for name in splits:
            save_split(artifacts.join(staging, f"{name}.npz"), splits[name])
        artifacts.write_json(artifacts.join(staging, "summary.json"), summary)
    log.info("prepare: %s", summary["sizes"])
    return summary
