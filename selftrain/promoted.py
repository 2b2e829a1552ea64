"""Promotion records (`promoted.json`): the records that chain generations, and reading a teacher from one.

A promotion record (`promoted.json`) names one checkpoint by URI and sha256. Generation k's
teacher is whatever generation k-1's record names; generation 0's record is the supervised
teacher. Each record carries the history of the chain so far, one row per generation.
"""

from __future__ import annotations

from typing import Any

from selftrain import artifacts
from selftrain.gate import GateError


def record(
    generation: str, checkpoint: str, model: str, passed: bool, reason: str, history: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    """A promotion record for `checkpoint`, hashed now."""
    return {
        "generation": generation,
        "checkpoint": checkpoint,
        "sha256": artifacts.content_hash(checkpoint),
        "model": model,
        "passed": passed,
        "reason": reason,
        **extra,
        "history": history,
    }


def read_record(uri: str) -> dict[str, Any]:
    rec = artifacts.read_json(uri)
    missing = {"generation", "checkpoint", "sha256", "passed", "reason", "history"} - set(rec)
    if missing:
        raise artifacts.ArtifactError(f"'{uri}' is not a promotion record (missing {', '.join(sorted(missing))})")
    return rec


def resolve(uri: str) -> tuple[str, dict[str, Any] | None]:
    """A model URI -> (checkpoint URI, its promotion record or None).

    `uri` is a checkpoint, or a promotion record: then the record must have passed its gate and
    the checkpoint it names must still hash to what the record says.
    """
    if not uri.endswith(".json"):
        return uri, None
    rec = read_record(uri)
    if not rec["passed"]:
        raise GateError(
            f"{rec['generation']} did not promote its student ({rec['reason']}), so the chain of generations stops "
            f"after {rec['generation']}: '{uri}' names no new teacher"
        )
    actual = artifacts.content_hash(rec["checkpoint"])
    if actual != rec["sha256"]:
        raise artifacts.ArtifactError(
            f"'{rec['checkpoint']}' has sha256 {actual[:12]}…, but '{uri}' promoted {rec['sha256'][:12]}…: "
            "it changed "
            "after promotion; rerun that generation"
        )
    return rec["checkpoint"], rec
