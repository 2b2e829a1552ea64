"""robustness-reference: the fixed reference model's part (the -A set, its -C/-P results)."""

from __future__ import annotations

import logging
from typing import Any

from selftrain import artifacts, runtime
from selftrain.data import Split, has_split, load_split, save_split
from selftrain.params import Params
from selftrain.predict import predict_logits
from selftrain.promoted import resolve
from selftrain.robustness import evaluation as robustness
from selftrain.robustness.hard_set import select_hard

log = logging.getLogger("selftrain")


def run(params: Params, *, data: str, sets: str, reference_model: str, out: str) -> dict[str, Any]:
    """Freeze the reference model's part: the -A set (holdout images it gets wrong) and its own -C/-P results,
    which normalise every later CE and FR. The reference is --reference-model unless params robustness.reference
    names one."""
    from selftrain import models  # timm: here, so that make-robustness-sets, which builds no model, starts without it

    uri = params.robustness.reference or reference_model
    checkpoint, rec = resolve(uri)
    net, spec = models.load_checkpoint(checkpoint)
    device = runtime.pick_device(params.runtime.device)
    net = runtime.place(net, device)
    hard, hard_info = None, None
    if has_split(data, "holdout"):
        pool = load_split(data, "holdout")
        predictions = (
            predict_logits(net, pool.images, params.evaluate.batch_size, device, desc="reference on holdout")
            .argmax(1)
            .numpy()
        )
        rows = select_hard(pool.labels, predictions, params.robustness.hard_images, params.seed)
        hard = Split(pool.images[rows], pool.labels[rows], pool.ids[rows], pool.classes)
        hard_info = {"pool": len(pool), "reference_wrong": int((predictions != pool.labels).sum()), "size": len(rows)}
    else:
        log.warning("robustness-reference: '%s' has no holdout split, so there is no -A set", data)
    corrupted, sequences = robustness.load_sets(sets)
    raw = robustness.measure(net, corrupted, sequences, hard, params.evaluate.batch_size, device, desc="reference")
    result = {
        "name": rec["generation"] if rec else checkpoint,
        "model": spec.name,
        "checkpoint": checkpoint,
        "sha256": artifacts.content_hash(checkpoint),
        "sets_sha256": artifacts.content_hash(sets),
        "hard_set": hard_info,
        "raw": raw,
    }
    with artifacts.atomic_dir(out) as staging:
        if hard is not None:
            save_split(artifacts.join(staging, "hard.npz"), hard)
        artifacts.write_json(artifacts.join(staging, "reference.json"), result)
    log.info("robustness-reference: %s, -A set %s", result["name"], hard_info)
    return {k: result[k] for k in ("name", "model", "checkpoint", "hard_set")}
