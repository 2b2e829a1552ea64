"""Promotion: the gate that makes a generation's student the next teacher, or stops the chain."""

from __future__ import annotations

import logging
from typing import Any

from selftrain import artifacts
from selftrain.gate import decide
from selftrain.params import Params
from selftrain.promoted import record, resolve

log = logging.getLogger("selftrain")


def run(params: Params, *, generation: str, metrics: str, teacher: str, out: str) -> dict[str, Any]:
    """Record the next generation's teacher: the student if it passes every rule of params promote.rules, else the
    teacher (and the chain stops); the record lists each rule's values and verdict."""
    m = artifacts.read_json(metrics)
    _, teacher_record = resolve(teacher)
    if m["teacher"]["checkpoint_sha256"] != (teacher_record or {"sha256": artifacts.content_hash(teacher)})["sha256"]:
        raise artifacts.ArtifactError(f"'{metrics}' was computed for another teacher than '{teacher}': rerun evaluate")
    passed, reason, rules = decide(m, params.promote)
    role = "student" if passed else "teacher"
    row = {
        "generation": generation,
        "teacher_model": m["teacher"]["model"],
        "student_model": m["student"]["model"],
        **{
            f"{r}_{k}": m[r][k]
            for r in ("teacher", "student")
            for k in ("val_top1", "test_top1", "mCE", "mFR", "hard_top1")
            if k in m[r]
        },
        "promoted": role,
    }
    history = (teacher_record or {"history": []})["history"] + [row]
    rec = record(
        generation, m[role]["checkpoint"], m[role]["model"], passed, reason, history, promoted=role, rules=rules
    )
    if rec["sha256"] != m[role]["checkpoint_sha256"]:
        raise artifacts.ArtifactError(f"'{rec['checkpoint']}' changed since '{metrics}' was computed: rerun evaluate")
    artifacts.write_json(out, rec)
    log.info("promote %s: %s", generation, reason)
    return rec
