"""Noisy Student (Xie et al. 2020): the student on filter-balance's pseudo-labels, jointly with labeled batches,
noised (RandAugment, dropout, stochastic depth). Its options are the `student` section; with
`student.consistency` it adds FixMatch's term (selftrain.methods.fixmatch) on the unlabeled images left over."""

from __future__ import annotations

from typing import Any

from selftrain.methods import Method


def epochs_work(params: Any, labeled: int, unlabeled: int) -> tuple[int, int]:
    """An epoch-based student: every pseudo-labelled image once per epoch with its labeled share; validated every
    student.val_every epochs and after the last."""
    s = params.student
    validations = len(set(range(s.val_every, s.epochs + 1, s.val_every)) | {s.epochs})
    return s.epochs * (unlabeled + unlabeled // s.unlabeled_ratio), validations


METHOD = Method(
    name="noisy_student",
    stage="train-student",
    consumes="pseudo_labels",
    data_parallel=True,
    step="selftrain.methods.noisy_student.step:PseudoLabelStep",
    work=epochs_work,
    summary="student on filtered, balanced pseudo-labels, joint with labeled batches, noised (Xie et al. 2020)",
    reads=("student", "methods.fixmatch"),  # fixmatch: its consistency term, with student.consistency
)
