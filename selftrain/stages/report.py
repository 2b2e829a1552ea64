"""report: the chain's tables and plots, and the pseudo-label gallery."""

from __future__ import annotations

import json
from typing import Any

from selftrain import artifacts
from selftrain.data import load_split
from selftrain.data.splits import withheld_labels
from selftrain.gallery import gallery
from selftrain.params import Params
from selftrain.promoted import read_record
from selftrain.rendering import history_table, write_report


def run(
    params: Params,
    *,
    promoted: str,
    pseudo: str,
    metrics: str,
    out: str,
    data: str | None = None,
    logits_store: str | None = None,
    previous_logits: str | None = None,
) -> dict[str, Any]:
    """Tables and plots of the chain so far: accuracy per generation, pseudo-label confidence, per-class counts,
    and this generation's error vs corruption severity, teacher vs student; with the data and the logit store,
    the pseudo-label gallery too (and the labels that changed since the previous generation's store)."""
    rec = read_record(promoted)
    counts = artifacts.read_json(artifacts.join(pseudo, "counts.json"))
    shown = None
    if data and logits_store:
        png, summary = pseudo_label_gallery(params, rec["generation"], data, logits_store, pseudo, previous_logits)
        shown = {"gallery.png": png, "gallery.json": json.dumps(summary, indent=1).encode()}
    with artifacts.atomic_dir(out) as staging:
        files = write_report(staging, rec, counts, artifacts.read_json(metrics), shown)
    return {"generation": rec["generation"], "files": files, "table": history_table(rec)}


def pseudo_label_gallery(
    params: Params, generation: str, data: str, logits_store: str, pseudo: str, previous_logits: str | None = None
) -> tuple[bytes, dict[str, Any]]:
    """One generation's pseudo-label gallery (PNG) and its per-class counts; with the embedded data set, whose
    unlabeled images have known labels, the confident mistakes too."""
    truth = withheld_labels(params.data, load_split(data, "unlabeled").ids)
    return gallery(
        data, logits_store, pseudo, f"{generation}: pseudo-labels of the unlabeled set", previous_logits, truth
    )
