"""train-student: a generation's student by noisy_student, distill or fixmatch (any method whose stage it is)."""

from __future__ import annotations

from typing import Any

from selftrain import methods
from selftrain.params import Params
from selftrain.stages._training import train_by_method


def run(
    params: Params,
    *,
    generation: str,
    data: str,
    teacher: str,
    out: str,
    pseudo: str | None = None,
    logits_store: str | None = None,
    resume: str | None = None,
) -> dict[str, Any]:
    """Train the generation's noised student on labeled and pseudo-labeled batches jointly.

    Method noisy_student: the pseudo-labels of --pseudo (filter-balance's output); method distill: every
    unlabeled image with the teacher's stored outputs of --logits-store as targets, under student.loss
    (kd, dist, soft_ce); method fixmatch: every unlabeled image, labelled by the student's own confident
    predictions on weak views (methods.fixmatch params; --teacher only for student.init: teacher). Writes
    model.safetensors and log.csv. Checkpoints every runtime.checkpoint_every steps (fixmatch:
    methods.fixmatch.checkpoint_every) to --resume (default: OUT.resume) and resumes from there when restarted."""
    method = methods.get(params.generation(generation).method)
    if method.stage != "train-student":
        raise ValueError(f"{generation} is method {method.name}: its stage is {method.stage}, not train-student")
    return train_by_method(
        params, method, generation, data, out, teacher=teacher, pseudo=pseudo, logits_store=logits_store, resume=resume
    )
