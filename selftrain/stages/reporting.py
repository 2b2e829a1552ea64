"""Reports: the chain's tables and plots, and the TwoMoons picture of MPL."""

from __future__ import annotations

import json
from typing import Any

from selftrain import artifacts
from selftrain.data import load_split
from selftrain.data.splits import withheld_labels
from selftrain.gallery import gallery
from selftrain.params import Params
from selftrain.promote import read_record
from selftrain.report import history_table, write_report


def report(
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
    return gallery(data, logits_store, pseudo, f"{generation}: pseudo-labels of the unlabeled set", previous_logits, truth)


def twomoons(params: Params, *, out: str) -> dict[str, Any]:
    """The TwoMoons picture of MPL: supervised vs plain pseudo-labels vs MPL from 6 labeled points.

    One draw of the moons per params twomoons.seeds; writes twomoons.png (the first seed's decision
    boundaries and accuracies) and results.json (accuracy per seed, mean, std)."""
    from selftrain import twomoons as moons  # torch: here, so that `selftrain report` starts without it

    result = moons.write(out, params.twomoons.seeds, moons.MoonsSetup(steps=params.twomoons.steps))
    return {name: {k: result[name][k] for k in ("mean", "std")} for name in moons.METHODS}
