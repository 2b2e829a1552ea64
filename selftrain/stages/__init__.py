"""The stages: pure functions of (params, input URIs) that write output URIs and return a small summary.

Each runs the same whether DVC (`selftrain <stage>` in dvc.yaml), Prefect (tasks/) or a Kubernetes Job
called it; none reads globals or the environment for what it computes. URIs may be local paths or s3://...;
every output is written atomically. One module per family: data, teacher, inference, labeling
(pseudo-labels), training (the students, by method), robustness, evaluation, promotion, lineage, reporting.
`STAGES` names them for the CLI; selftrain.methods lists the same names (tests/test_methods.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

Stage = Callable[..., dict[str, Any]]

# stage -> (module under selftrain.stages, function). A module is imported when its stage is first looked up,
# so `selftrain promote` does not pay the seconds that timm and torchvision take to import for stages that train.
_WHERE: dict[str, tuple[str, str]] = {
    "list-data": ("data", "list_data"),
    "prepare": ("data", "prepare"),
    "train-teacher": ("teacher", "train_teacher"),
    "infer": ("inference", "infer"),
    "filter-balance": ("labeling", "filter_balance"),
    "train-student": ("training", "train_student"),
    "train-mpl": ("training", "train_mpl"),
    "train-reduced-mpl": ("training", "train_reduced_mpl"),
    "train-generation": ("training", "train_generation"),
    "make-robustness-sets": ("robustness", "make_robustness_sets"),
    "robustness-reference": ("robustness", "robustness_reference"),
    "evaluate": ("evaluation", "evaluate"),
    "promote": ("promotion", "promote"),
    "report": ("reporting", "report"),
    "record-lineage": ("lineage", "record_lineage"),
    "twomoons": ("reporting", "twomoons"),
}

# Stages that build no timm model: the CLI skips the check of params' model names for them (tests/test_params.py
# checks that their modules do not import timm), so they start without importing it.
MODEL_FREE = frozenset({"list-data", "prepare", "make-robustness-sets", "filter-balance", "promote", "record-lineage", "report", "twomoons"})


class StageTable(Mapping[str, Stage]):
    """Stage name -> stage function, importing the function's module on lookup."""

    def __getitem__(self, name: str) -> Stage:
        module, function = _WHERE[name]
        fn: Stage = getattr(importlib.import_module(f"{__name__}.{module}"), function)
        return fn

    def __iter__(self) -> Iterator[str]:
        return iter(_WHERE)

    def __len__(self) -> int:
        return len(_WHERE)


STAGES = StageTable()


def __getattr__(name: str) -> Any:
    """The stage functions and a few helpers by name (`from selftrain.stages import infer`), imported on first use."""
    helpers = {"CHECKPOINT": "files", "join_logit_parts": "inference"}
    functions = {fn: module for module, fn in _WHERE.values()}
    module = helpers.get(name) or functions.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


__all__ = ["CHECKPOINT", "MODEL_FREE", "STAGES", "join_logit_parts", *(fn for _, fn in _WHERE.values())]
