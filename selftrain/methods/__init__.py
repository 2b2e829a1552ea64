"""Which self-training methods exist: one package per method under `selftrain/methods/`, the one list the rest reads.

A method's package holds, in its torch-free `__init__.py`, its record `METHOD` (a `Method`, built by keywords as
timm builds an `OptimInfo`) and, when it has options of its own, their section (a `MethodParams`, read from
`methods.<name>` in params.yaml); its training step in `step.py`, imported only when a run needs it; its maths
beside it. params.py (what `generations.genK.method` may be and the `methods` sections), the stage dispatch
(`train-generation`), the Prefect flow, the Kubernetes resource fallback, the task cache, `selftrain plan` and
lineage read `registry()`; dvc.yaml's train-student depends on this directory and on the `methods` params. So a new
method is a new package here and its lines in params.yaml.

Nothing here imports torch or timm: loading params reads it.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from selftrain.section import Section

Consumes = Literal["pseudo_labels", "logits", "nothing"]
# (training images, passes over val) of one run, given (params, labeled, unlabeled) sizes: `selftrain plan`
Work = Callable[[Any, int, int], tuple[int, int]]

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
SECTION = "methods"  # params.yaml's section holding each method's own options, one subsection per method


class MethodParams(Section):
    """A method's own options: params.yaml's `methods.<method name>`."""


@dataclass(frozen=True, kw_only=True)
class Method:
    """One self-training method."""

    name: str  # its package's name, and the value of `generations.genK.method`
    stage: str  # the CLI stage that trains a generation's student by this method
    consumes: (
        Consumes  # what of the generation it trains on: filter-balance's pseudo-labels, infer's logits, or neither
    )
    data_parallel: bool  # runs under torchrun (resources: gpu > 1 or nodes > 1)
    step: str  # "module:class" of its training step, imported by step_class(), never at load
    work: Work
    summary: str
    params: type[MethodParams] | None = None  # its own section, `methods.<name>`
    reads: tuple[str, ...] = ("student",)  # the other params sections it reads (besides `seed` and its generation's)
    smaller_student: bool = False  # its student may have fewer parameters than its teacher (distilling down)

    @property
    def sections(self) -> tuple[str, ...]:
        """Every params section it reads, dotted (`methods.mpl`)."""
        own = (f"{SECTION}.{self.name}",) if self.params is not None else ()
        return tuple(dict.fromkeys((*self.reads, *own)))

    @property
    def stage_inputs(self) -> tuple[str, ...]:
        """The keyword arguments, beyond generation/data/teacher/out, that its stage takes from the generation."""
        return {"pseudo_labels": ("pseudo",), "logits": ("logits_store",), "nothing": ()}[self.consumes]


@functools.cache
def registry() -> dict[str, Method]:
    """Every method, by name: the `METHOD` of each package under selftrain/methods/, in name order."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if not info.ispkg:
            continue
        method = getattr(importlib.import_module(f"{__name__}.{info.name}"), "METHOD", None)
        if not isinstance(method, Method) or method.name != info.name:
            raise TypeError(
                f"selftrain/methods/{info.name}/__init__.py must define METHOD = Method(name='{info.name}', ...)"
            )
        found[method.name] = method
    return found


def names() -> tuple[str, ...]:
    return tuple(registry())


def get(name: str) -> Method:
    if name not in registry():
        raise ValueError(f"unknown method '{name}'; methods are {', '.join(registry())}")
    return registry()[name]


def step_class(name: str) -> Any:
    """The training step class of method `name` (imports torch)."""
    module, _, attr = get(name).step.partition(":")
    return getattr(importlib.import_module(module), attr)


def method_stages() -> tuple[str, ...]:
    """The training stages of the methods, each once."""
    return tuple(dict.fromkeys(m.stage for m in registry().values()))


def stage_names() -> tuple[str, ...]:
    """Every stage of the CLI: the pipeline's and the methods' (selftrain.stages.STAGES has exactly these)."""
    return PIPELINE_STAGES + tuple(s for s in method_stages() if s not in PIPELINE_STAGES)


def training_stages() -> tuple[str, ...]:
    """The stages that train a model (their pods get /dev/shm and GPUs)."""
    return ("train-teacher", "train-generation", *method_stages())


def data_parallel_stages() -> tuple[str, ...]:
    """The stages that may run under torchrun over several GPUs or nodes."""
    stages = registry().values()
    parallel = (s for s in method_stages() if all(m.data_parallel for m in stages if m.stage == s))
    return ("train-teacher", "train-generation", *parallel)


def dvc_stage(stage: str) -> str:
    """dvc.yaml's stage that a CLI (or flow task) stage stands for: a method's stage is dvc.yaml's `train-student`."""
    return DVC_TRAIN_STAGE if stage == "train-generation" or stage in method_stages() else stage


def params_sections() -> tuple[str, ...]:
    """The top-level params sections some method reads (dvc.yaml's train-student tracks them all: DVC cannot vary
    deps per item)."""
    return tuple(dict.fromkeys(s.split(".")[0] for m in registry().values() for s in m.sections))
