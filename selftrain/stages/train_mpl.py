"""train-mpl: a generation's student by Meta Pseudo Labels."""

from __future__ import annotations

from typing import Any

from selftrain import methods
from selftrain.params import Params
from selftrain.stages._training import train_by_method


def run(
    params: Params, *, generation: str, data: str, teacher: str, out: str, resume: str | None = None
) -> dict[str, Any]:
    """Meta Pseudo Labels: teacher and student trained together, then the student finetuned on labeled data.

    The student learns from the teacher's pseudo-labels of strongly augmented unlabeled images; the teacher
    (starting from --teacher) from the change this made to the student's labeled loss, plus labeled CE and UDA.
    Checkpoints every methods.mpl.checkpoint_every steps to --resume (default: OUT.resume) and resumes from there when
    restarted. Writes model.safetensors (the student), mpl_teacher.safetensors, mpl_log.csv and log.csv (the
    finetune)."""
    return train_by_method(
        params,
        methods.get("mpl"),
        generation,
        data,
        out,
        teacher=teacher,
        pseudo=None,
        logits_store=None,
        resume=resume,
    )
