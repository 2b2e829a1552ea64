"""The promotion decision: does the student replace the teacher for the next generation?"""
from __future__ import annotations

from typing import Any

from selftrain.params import PromoteParams


def decide(metrics: dict[str, Any], p: PromoteParams) -> tuple[bool, str]:
    """(promote the student?, a sentence saying why) from evaluate's metrics."""
    t, s = metrics["teacher"][p.metric], metrics["student"][p.metric]
    delta = s - t
    if delta > p.min_delta:
        return True, f"student {p.metric} {s:.4f} beats teacher {t:.4f} by {delta:+.4f} (> min_delta {p.min_delta})"
    return False, f"student {p.metric} {s:.4f} vs teacher {t:.4f} ({delta:+.4f}) does not beat it by more than min_delta {p.min_delta}: keeping the teacher"
