"""The stages: pure functions of (params, input URIs) that write output URIs and return a small summary.

Each runs the same whether DVC (`selftrain <stage>` in dvc.yaml), Prefect (tasks/) or a Kubernetes Job
called it; none reads globals or the environment for what it computes. URIs may be local paths or s3://...;
every output is written atomically. One module per family: data, teacher, inference, labeling
(pseudo-labels), training (the students, by method), robustness, evaluation, promotion, lineage, reporting.
`STAGES` names them for the CLI; selftrain.methods lists the same names (tests/test_methods.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from selftrain.stages.data import prepare
from selftrain.stages.evaluation import evaluate
from selftrain.stages.files import CHECKPOINT
from selftrain.stages.inference import infer, join_logit_parts
from selftrain.stages.labeling import filter_balance
from selftrain.stages.lineage import record_lineage
from selftrain.stages.promotion import promote
from selftrain.stages.reporting import report, twomoons
from selftrain.stages.robustness import make_robustness_sets, robustness_reference
from selftrain.stages.teacher import train_teacher
from selftrain.stages.training import train_generation, train_mpl, train_reduced_mpl, train_student

STAGES: dict[str, Callable[..., dict[str, Any]]] = {
    "prepare": prepare,
    "train-teacher": train_teacher,
    "infer": infer,
    "filter-balance": filter_balance,
    "train-student": train_student,
    "train-mpl": train_mpl,
    "train-reduced-mpl": train_reduced_mpl,
    "train-generation": train_generation,
    "make-robustness-sets": make_robustness_sets,
    "robustness-reference": robustness_reference,
    "evaluate": evaluate,
    "promote": promote,
    "report": report,
    "record-lineage": record_lineage,
    "twomoons": twomoons,
}

__all__ = ["CHECKPOINT", "STAGES", "join_logit_parts", *(fn.__name__ for fn in STAGES.values())]
