"""Reports: the chain's tables and plots, and the TwoMoons picture of MPL."""

from __future__ import annotations

from typing import Any

from selftrain import artifacts
from selftrain import twomoons as moons
from selftrain.params import Params
from selftrain.promote import read_record
from selftrain.report import history_table, write_report


def report(params: Params, *, promoted: str, pseudo: str, metrics: str, out: str) -> dict[str, Any]:
    """Tables and plots of the chain so far: accuracy per generation, pseudo-label confidence, per-class counts,
    and this generation's error vs corruption severity, teacher vs student."""
    rec = read_record(promoted)
    counts = artifacts.read_json(artifacts.join(pseudo, "counts.json"))
    with artifacts.atomic_dir(out) as staging:
        files = write_report(staging, rec, counts, artifacts.read_json(metrics))
    return {"generation": rec["generation"], "files": files, "table": history_table(rec)}


def twomoons(params: Params, *, out: str) -> dict[str, Any]:
    """The TwoMoons picture of MPL: supervised vs plain pseudo-labels vs MPL from 6 labeled points.

    One draw of the moons per params twomoons.seeds; writes twomoons.png (the first seed's decision
    boundaries and accuracies) and results.json (accuracy per seed, mean, std)."""
    result = moons.write(out, params.twomoons.seeds, moons.MoonsSetup(steps=params.twomoons.steps))
    return {name: {k: result[name][k] for k in ("mean", "std")} for name in moons.METHODS}
