"""Inference: the teacher's outputs on every unlabeled image, as a sharded logit store (whole, or part by part)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from selftrain import artifacts, logits, models, runtime
from selftrain.data import Split, split_column
from selftrain.params import Params
from selftrain.predict import batch_logits
from selftrain.promoted import resolve
from selftrain.stages._files import file_hash_in

log = logging.getLogger("selftrain")


def run(params: Params, *, teacher: str, data: str, out: str, part: int | None = None) -> dict[str, Any]:
    """Run the teacher (eval mode, no augmentation) on every unlabeled image; writes a sharded float16 logit store.

    With infer.parts = N > 1 the unlabeled set is cut into N parts: --part i infers part i only (one pod of
    an Indexed Job); without --part every part not yet done is inferred here, then the parts are joined."""
    model, _ = resolve(teacher)
    net, spec = models.load_checkpoint(model)
    # the unlabeled split is read batch by batch, never whole: a pool of any size in the memory of a few batches
    images, ids = split_column(data, "unlabeled", "images"), split_column(data, "unlabeled", "ids")
    if images.shape[1:] != (spec.image_size, spec.image_size, spec.in_chans):
        raise ValueError(
            f"unlabeled images are {images.shape[1:]}, the model '{model}' expects "
            f"{spec.image_size}x{spec.image_size}x{spec.in_chans}"
        )
    if ids.shape != images.shape[:1]:
        raise ValueError(f"'{images.uri}' holds {images.shape[0]} images but {ids.shape[0]} ids: rerun prepare")
    device = runtime.pick_device(params.runtime.device)
    net = runtime.place(net, device)
    p, hashes, count = params.infer, store_hashes(model, data), images.shape[0]

    def write(uri: str, rows: slice, desc: str) -> dict[str, Any]:
        batches = -(-len(range(*rows.indices(count))) // p.batch_size)
        with artifacts.atomic_dir(uri) as staging:
            writer = logits.LogitWriter(staging, spec.num_classes, p.topk, p.shard_size, **hashes)
            out = batch_logits(net, images.batches(rows, p.batch_size), device, batches, desc=desc)
            for batch_ids, out_logits in zip(ids.batches(rows, p.batch_size), out, strict=True):
                writer.add(batch_ids, out_logits)
            return writer.close()

    if p.parts == 1 and part is None:
        header = write(out, slice(None), "infer")
    else:
        for i in [int(part)] if part is not None else range(p.parts):
            rows, uri = logits.part_rows(count, i, p.parts), logits.part_uri(out, i, p.parts)
            if part is None and logits.part_done(uri, **hashes):
                log.info("infer: part %d of %d already done", i, p.parts)
                continue
            header = write(uri, rows, f"infer part {i}/{p.parts}")
        if part is None:
            header = logits.merge_parts(out, p.parts, **hashes)
    summary = {"images": header["count"], "shards": len(header["shards"]), "k": header["k"]}
    if part is not None:
        summary["part"] = f"{part} of {p.parts}"
    log.info("infer: %s", summary)
    return summary


def store_hashes(model: str, data: str) -> dict[str, str]:
    return {"teacher_sha256": artifacts.content_hash(model), "unlabeled_sha256": file_hash_in(data, "unlabeled.npz")}


def join_logit_parts(params: Params, *, teacher: str, data: str, out: str) -> dict[str, Any]:
    """Join the infer.parts parts that `infer --part i` wrote into the store at `out`; refuses a partial set."""
    header = logits.merge_parts(out, params.infer.parts, **store_hashes(resolve(teacher)[0], data))
    return {"images": header["count"], "shards": len(header["shards"]), "k": header["k"]}


def stored_log_probs(logits_store: str, data: str, unlabeled: Split) -> np.ndarray:
    """The teacher's stored log-probabilities of every unlabeled image, in the unlabeled split's order."""
    stored = logits.read_store(logits_store, unlabeled_sha256=file_hash_in(data, "unlabeled.npz"))
    if stored.ids is None or not np.array_equal(stored.ids, unlabeled.ids):
        raise logits.LogitStoreError(
            f"'{logits_store}' rows do not line up with the unlabeled split's ids: rerun infer"
        )
    return stored.dense_log_probs()
