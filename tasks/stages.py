"""One Prefect task per stage, named like the DAG; each calls the stage function unchanged."""
from __future__ import annotations

from prefect import task

from selftrain import stages

prepare = task(stages.prepare, name="prepare")
train_teacher = task(stages.train_teacher, name="train-teacher")
infer = task(stages.infer, name="infer")
filter_balance = task(stages.filter_balance, name="filter-balance")
train_student = task(stages.train_student, name="train-student")
train_mpl = task(stages.train_mpl, name="train-mpl")
train_reduced_mpl = task(stages.train_reduced_mpl, name="train-reduced-mpl")
make_robustness_sets = task(stages.make_robustness_sets, name="make-robustness-sets")
robustness_reference = task(stages.robustness_reference, name="robustness-reference")
evaluate = task(stages.evaluate, name="evaluate")
promote = task(stages.promote, name="promote")
report = task(stages.report, name="report")
