"""Pseudo-labels: filter the stored teacher outputs by confidence, balance the classes, write soft or hard labels."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from selftrain import artifacts, logits, pseudo_labels
from selftrain.data import split_classes
from selftrain.params import Params
from selftrain.stages._files import file_hash_in

log = logging.getLogger("selftrain")


def run(params: Params, *, logits_store: str, data: str, out: str) -> dict[str, Any]:
    """Filter stored teacher outputs by confidence, balance classes, and write soft or hard pseudo-labels.

    Two passes over the store's values and class indices, shard by shard (memory does not grow with the
    unlabeled pool; the split's images are not read); pseudo-labels are written in row order as sparse targets
    (class indices and probabilities), one file per store shard: a row's id is in that shard's ids."""
    classes = split_classes(data, "unlabeled")
    # the header's hash of the unlabeled split ties the store's rows to it: infer writes them in the split's order
    header = logits.open_store(logits_store, unlabeled_sha256=file_hash_in(data, "unlabeled.npz"))
    if header["num_classes"] != len(classes):
        raise logits.LogitStoreError(
            f"'{logits_store}' has {header['num_classes']} classes, the data {len(classes)}: rerun infer"
        )

    def chunks() -> Iterator[pseudo_labels.Chunk]:
        for start, part in logits.iter_shards(logits_store, header, with_ids=False):
            yield pseudo_labels.Chunk(start, part.values, part.indices)

    plan, picks = pseudo_labels.two_passes(
        chunks, params.pseudo_labels, params.seed, classes, workers=min(4, os.cpu_count() or 1)
    )
    # writer threads: shards are written (and fsynced) while the next are picked; at most four wait, so memory
    # stays bounded
    with artifacts.atomic_dir(out) as staging, ThreadPoolExecutor(2) as writer:
        writes: list[Future[None]] = []
        for i, picked in enumerate(picks):
            writes.append(
                writer.submit(
                    artifacts.save_arrays,
                    artifacts.join(staging, f"pseudo-{i:05d}.npz"),
                    rows=picked.rows,
                    target_indices=picked.target_indices,
                    target_values=picked.target_values,
                )
            )
            if len(writes) > 4:
                writes.pop(0).result()
        for w in writes:
            w.result()
        artifacts.write_json(artifacts.join(staging, "counts.json"), plan.stats)
    log.info("filter-balance: %s", plan.stats["total"])
    return plan.stats["total"]


def load_pseudo(uri: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """filter-balance's output: the rows (with copies) and their dense (n, C) targets."""
    chosen = artifacts.load_shards(uri, "pseudo")
    return chosen["rows"], pseudo_labels.dense(chosen["target_indices"], chosen["target_values"], num_classes)
