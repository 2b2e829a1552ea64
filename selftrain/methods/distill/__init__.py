"""Distillation: Noisy Student's step on every unlabeled image, its targets the stored teacher's outputs, under
`student.loss` (kd, dist, soft_ce: losses.py); the student may be smaller than its teacher."""

from __future__ import annotations

from selftrain.methods import Method
from selftrain.methods.noisy_student import epochs_work

METHOD = Method(
    name="distill",
    stage="train-student",
    consumes="logits",
    data_parallel=True,
    step="selftrain.methods.noisy_student.step:PseudoLabelStep",
    work=epochs_work,
    summary="student on every unlabeled image's stored teacher logits under student.loss (kd, dist, soft_ce)",
    reads=("student", "methods.fixmatch"),  # fixmatch: its consistency term, with student.consistency
    smaller_student=True,
)
