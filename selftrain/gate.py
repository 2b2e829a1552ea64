"""The promotion gate: does the student replace the teacher? Every rule of `promote.rules` must pass."""

from __future__ import annotations

from typing import Any

from selftrain.params import GATE_METRICS, PromoteParams


class GateError(RuntimeError):
    """A generation did not promote its student: the chain of generations stops there."""


def decide(metrics: dict[str, Any], p: PromoteParams) -> tuple[bool, str, list[dict[str, Any]]]:
    """(promote the student?, a sentence saying why, each rule's values and verdict) from evaluate's metrics.

    A rule's gain is the student's improvement over the teacher in the metric's better direction
    (accuracy up, error or flip rate down); the rule passes when gain >= min_gain.
    """
    verdicts = []
    for rule in p.rules:
        if rule.metric not in metrics["teacher"]:
            raise ValueError(
                f"promote.rules names '{rule.metric}', which the metrics have not got: "
                "run evaluate with --sets and --reference (the robustness sets) or drop the rule"
            )
        t, s = metrics["teacher"][rule.metric], metrics["student"][rule.metric]
        gain = (s - t) if GATE_METRICS[rule.metric] else (t - s)
        verdicts.append(
            {
                "metric": rule.metric,
                "teacher": t,
                "student": s,
                "gain": gain,
                "min_gain": rule.min_gain,
                "passed": gain >= rule.min_gain,
            }
        )
    said = "; ".join(
        f"{v['metric']} {'PASS' if v['passed'] else 'FAIL'}: student {v['student']:.4f} vs teacher {v['teacher']:.4f}, "
        f"gain {v['gain']:+.4f} {'>=' if v['passed'] else '<'} min_gain {v['min_gain']}"
        for v in verdicts
    )
    failed = [v["metric"] for v in verdicts if not v["passed"]]
    if failed:
        return False, f"failed rule(s) {', '.join(failed)}: keeping the teacher ({said})", verdicts
    return True, f"all {len(verdicts)} rule(s) passed ({said})", verdicts
