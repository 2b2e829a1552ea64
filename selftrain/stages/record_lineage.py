"""Lineage: what made a generation's model, by content hash (selftrain.lineage builds the record)."""

from __future__ import annotations

from typing import Any

from selftrain import artifacts
from selftrain import lineage as lineages
from selftrain.params import Params
from selftrain.promoted import read_record


def run(
    params: Params,
    *,
    generation: str,
    data: str,
    teacher: str,
    logits_store: str,
    pseudo: str,
    student: str,
    metrics: str,
    promoted: str,
    out: str,
    dvc_lock: str | None = None,
) -> dict[str, Any]:
    """Record what made the generation's model: git commit, dvc.lock stage hashes (with --dvc-lock), params, the
    content hashes of its inputs (data, teacher checkpoint, logits, pseudo-labels) and outputs, seeds, package
    versions and machine; writes lineage.json (`selftrain lineage` prints the chain, `selftrain reproduce` rebuilds
    it)."""
    teacher_record = read_record(teacher)
    rec = lineages.build(
        generation=generation,
        method=params.generation(generation).method,
        params={k: v for k, v in params.model_dump(mode="json").items() if k in lineages.PARAMS}
        | {"generations": {generation: params.generation(generation).model_dump(mode="json")}},
        seed=params.seed,
        inputs={
            "data": data,
            "teacher_checkpoint": teacher_record["checkpoint"],
            "logits": logits_store,
            "pseudo": pseudo,
        },
        outputs={"student_checkpoint": student, "metrics": metrics, "promoted": promoted},
        teacher_record=teacher_record,
        metrics=artifacts.read_json(metrics),
        promoted=read_record(promoted),
        dvc_lock=dvc_lock,
    )
    artifacts.write_json(out, rec)
    return {
        "generation": generation,
        "student_checkpoint": rec["outputs"]["student_checkpoint"]["sha256"],
        "git": rec["git"],
    }
