"""Evaluation: clean and robustness metrics of a generation's teacher and student."""

from __future__ import annotations

import logging
from typing import Any

from selftrain import artifacts, models, runtime
from selftrain.accuracy import accuracy
from selftrain.data import load_split, read_split
from selftrain.params import GATE_METRICS, Params
from selftrain.promoted import resolve
from selftrain.robustness import evaluation as robustness

log = logging.getLogger("selftrain")


def run(
    params: Params,
    *,
    teacher: str,
    student: str,
    data: str,
    out: str,
    sets: str | None = None,
    reference: str | None = None,
) -> dict[str, Any]:
    """Clean top-1 (and top-5) of teacher and student on val and test, and with --sets and --reference their
    -C/-P/-A robustness (mCE, relative mCE, mFR, mT5D, -A top-1, per corruption x severity); writes metrics.json."""
    if (sets is None) != (reference is None):
        raise ValueError(
            "evaluate: give both --sets (make-robustness-sets) and --reference (robustness-reference), or neither"
        )
    device = runtime.pick_device(params.runtime.device)
    val, test = load_split(data, "val"), load_split(data, "test")
    ref = hard = None
    if sets is not None:
        assert reference is not None
        artifacts.require_complete(reference)
        ref = artifacts.read_json(artifacts.join(reference, "reference.json"))
        if ref["sets_sha256"] != artifacts.content_hash(sets):
            raise artifacts.ArtifactError(
                f"'{reference}' was measured on other robustness sets than '{sets}': rerun robustness-reference"
            )
        corrupted, sequences = robustness.load_sets(sets)
        hard = read_split(artifacts.join(reference, "hard.npz")) if ref["hard_set"] else None
    metrics: dict[str, Any] = {}
    for role, uri in (("teacher", resolve(teacher)[0]), ("student", student)):
        net, spec = models.load_checkpoint(uri)
        net = runtime.place(net, device)
        v = accuracy(net, val, params.evaluate.batch_size, device)
        t = accuracy(net, test, params.evaluate.batch_size, device)
        metrics[role] = {
            "model": spec.name,
            "val_top1": v["top1"],
            **{f"test_{k}": x for k, x in t.items()},
            "checkpoint": uri,
            "checkpoint_sha256": artifacts.content_hash(uri),
        }
        if ref is not None:
            raw = robustness.measure(net, corrupted, sequences, hard, params.evaluate.batch_size, device, desc=role)
            summary = robustness.summarize(raw, ref["raw"])
            metrics[role].update(summary.pop("headline"))
            metrics[role]["robustness"] = summary
    metrics["student_minus_teacher"] = {
        k: metrics["student"][k] - metrics["teacher"][k]
        for k in ("test_top1", *GATE_METRICS)
        if k in metrics["teacher"]
    }
    if ref is not None:
        metrics["robustness_reference"] = {k: ref[k] for k in ("name", "model", "checkpoint", "sha256")}
    artifacts.write_json(out, metrics)
    log.info(
        "evaluate: teacher test %.4f, student test %.4f",
        metrics["teacher"]["test_top1"],
        metrics["student"]["test_top1"],
    )
    return _brief(metrics)


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics without the per-corruption detail: what the CLI prints and a Prefect task returns."""
    return {
        k: ({kk: vv for kk, vv in v.items() if kk != "robustness"} if isinstance(v, dict) else v)
        for k, v in metrics.items()
    }
