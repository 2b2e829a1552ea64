"""Which self-training methods exist: one record per method, the one list everything else reads.

`params.py` (what `generations.genK.method` may be), the stage dispatch (`train-generation`), the
Prefect flow's task choice, the Kubernetes resource fallback, the task cache's DVC-stage map,
`selftrain plan` and lineage all take the methods from `METHODS`, as timm builds an optimiser from
its `OptimInfo` record. A new method is its own module (its training step), one record here, its
params section and one `deps` line in dvc.yaml's train-student stage.

This module imports neither torch nor timm: loading params reads it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Consumes = Literal["pseudo_labels", "logits", "nothing"]

# The stages that do not depend on the method, in pipeline order. `train-generation` is what dvc.yaml runs:
# it reads the generation's method and runs that method's stage.
PIPELINE_STAGES = (
    "list-data",
    "prepare",
    "train-teacher",
    "infer",
    "filter-balance",
    "train-generation",
    "make-robustness-sets",
    "robustness-reference",
    "evaluate",
    "promote",
    "report",
    "record-lineage",
    "twomoons",
)
DVC_TRAIN_STAGE = "train-student"  # dvc.yaml's name for a generation's training stage (`train-generation` behind it)


Work = Callable[[Any, int, int], tuple[int, int]]


def _epochs_work(params: Any, labeled: int, unlabeled: int) -> tuple[int, int]:
    """An epoch-based student: every pseudo-labelled image once per epoch with its labeled share; validated every
    student.val_every epochs and after the last."""
    s = params.student
    validations = len(set(range(s.val_every, s.epochs + 1, s.val_every)) | {s.epochs})
    return s.epochs * (unlabeled + unlabeled // s.unlabeled_ratio), validations


def _mpl_work(teacher_views: int) -> Work:
    def work(params: Any, labeled: int, unlabeled: int) -> tuple[int, int]:
        m = params.mpl
        r = m.unlabeled_ratio
        # student: strong views (r) + the labeled feedback pass (1); a teacher that sees images: labeled + its views
        per_step = m.batch_size * ((1 + r) + ((1 + teacher_views * r) if teacher_views else 0))
        return m.steps * per_step + m.finetune_epochs * labeled, 0

    return work


def _fixmatch_work(params: Any, labeled: int, unlabeled: int) -> tuple[int, int]:
    """Per step a labeled batch and mu times as many unlabeled images, each seen twice (weak and strong view);
    validated every checkpoint_every steps."""
    f = params.fixmatch
    return f.steps * f.batch_size * (1 + 2 * f.unlabeled_ratio), f.steps // f.checkpoint_every


@dataclass(frozen=True)
class Method:
    """One self-training method."""

    name: str
    stage: str  # the CLI stage that trains a generation's student by this method
    sections: tuple[str, ...]  # the params sections it reads (besides `seed` and its generation's entry)
    consumes: Consumes  # what of the generation it trains on: filter-balance's pseudo-labels, infer's stored logits, or only the teacher
    data_parallel: bool  # runs under torchrun (resources: gpu > 1 or nodes > 1)
    step: str  # "module:class" of its training step (selftrain.steps), imported by step_class(), never here
    work: Work  # (training images, passes over val) of one run, given (params, labeled, unlabeled) sizes: `selftrain plan`
    summary: str
    smaller_student: bool = False  # its student may have fewer parameters than its teacher (distilling down)

    @property
    def stage_inputs(self) -> tuple[str, ...]:
        """The keyword arguments, beyond generation/data/teacher/out, that its stage takes from the generation."""
        return {"pseudo_labels": ("pseudo",), "logits": ("logits_store",), "nothing": ()}[self.consumes]


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "noisy_student",
            "train-student",
            ("student", "fixmatch"),  # fixmatch: its consistency term, with student.consistency
            "pseudo_labels",
            True,
            "selftrain.steps.pseudo_label:PseudoLabelStep",
            _epochs_work,
            "student on filtered, balanced pseudo-labels, joint with labeled batches, noised (Xie et al. 2020)",
        ),
        Method(
            "distill",
            "train-student",
            ("student", "fixmatch"),  # fixmatch: its consistency term, with student.consistency
            "logits",
            True,
            "selftrain.steps.pseudo_label:PseudoLabelStep",
            _epochs_work,
            "student on every unlabeled image's stored teacher logits under student.loss (kd, dist, soft_ce)",
            smaller_student=True,
        ),
        Method(
            "mpl",
            "train-mpl",
            ("student", "mpl"),
            "nothing",
            True,
            "selftrain.steps.mpl:MplStep",
            _mpl_work(2),
            "Meta Pseudo Labels: teacher and student trained together, the teacher from the student's labeled loss (Pham et al. 2021)",
        ),
        Method(
            "reduced_mpl",
            "train-reduced-mpl",
            ("student", "mpl"),
            "logits",
            True,
            "selftrain.steps.mpl:ReducedMplStep",
            _mpl_work(0),
            "MPL whose teacher is a small MLP over the large teacher's stored logits",
        ),
        Method(
            "fixmatch",
            "train-student",
            ("student", "fixmatch"),
            "nothing",
            True,
            "selftrain.steps.fixmatch:FixMatchStep",
            _fixmatch_work,
            "consistency training: CE on strong views against the model's own confident weak-view labels (Sohn et al. 2020); "
            "fixmatch.threshold: fixed, flexmatch or freematch",
        ),
    )
}
METHOD_NAMES = tuple(METHODS)


def get(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method '{name}'; methods are {', '.join(METHODS)}")
    return METHODS[name]


def step_class(name: str) -> Any:
    """The training step class of method `name` (imports torch)."""
    module, _, attr = get(name).step.partition(":")
    return getattr(importlib.import_module(module), attr)


def method_stages() -> tuple[str, ...]:
    """The training stages of the methods, each once, in registry order."""
    return tuple(dict.fromkeys(m.stage for m in METHODS.values()))


def stage_names() -> tuple[str, ...]:
    """Every stage of the CLI: the pipeline's and the methods' (selftrain.stages.STAGES has exactly these)."""
    return PIPELINE_STAGES + tuple(s for s in method_stages() if s not in PIPELINE_STAGES)


def training_stages() -> tuple[str, ...]:
    """The stages that train a model (their pods get /dev/shm and GPUs)."""
    return ("train-teacher", "train-generation", *method_stages())


def data_parallel_stages() -> tuple[str, ...]:
    """The stages that may run under torchrun over several GPUs or nodes."""
    return ("train-teacher", "train-generation", *(s for s in method_stages() if all(m.data_parallel for m in METHODS.values() if m.stage == s)))


def dvc_stage(stage: str) -> str:
    """dvc.yaml's stage that a CLI (or flow task) stage stands for: a method's stage is dvc.yaml's `train-student`."""
    return DVC_TRAIN_STAGE if stage == "train-generation" or stage in method_stages() else stage


def params_sections() -> tuple[str, ...]:
    """Every params section some method reads (dvc.yaml's train-student tracks them all: DVC cannot vary deps per item)."""
    return tuple(dict.fromkeys(s for m in METHODS.values() for s in m.sections))
