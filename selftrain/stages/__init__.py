"""The stages: pure functions of (params, input URIs) that write output URIs and return a small summary.

Each runs the same whether DVC (`selftrain <stage>` in dvc.yaml), Prefect (tasks/) or a Kubernetes Job
called it; none reads globals or the environment for what it computes. URIs may be local paths or s3://...;
every output is written atomically. One module per stage, named after it, its function `run`; `_training.py` and
`_files.py` are what they share.
`STAGES` names them for the CLI; selftrain.methods lists the same names (tests/test_methods.py).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from selftrain import methods

Stage = Callable[..., dict[str, Any]]

# The stages, each a module of this package named after it (as DVC's example-get-started names each stage script),
# its function `run`. A module is imported when its stage is first looked up, so `selftrain promote` does not pay
# the seconds that timm and torchvision take to import for stages that train.
NAMES = methods.stage_names()  # the pipeline's stages and the methods' (selftrain.methods)


def module_name(stage: str) -> str:
    """The stage's module under selftrain.stages: `train-teacher` -> train_teacher."""
    return stage.replace("-", "_")


# Stages that build no timm model: the CLI skips the check of params' model names for them (tests/test_params.py
# checks that their modules do not import timm), so they start without importing it.
MODEL_FREE = frozenset(
    {
        "list-data",
        "prepare",
        "make-robustness-sets",
        "filter-balance",
        "promote",
        "record-lineage",
        "report",
        "twomoons",
    }
)


class StageTable(Mapping[str, Stage]):
    """Stage name -> stage function, importing the function's module on lookup."""

    def __getitem__(self, name: str) -> Stage:
        if name not in NAMES:
            raise KeyError(name)
        fn: Stage = importlib.import_module(f"{__name__}.{module_name(name)}").run
        return fn

    def __iter__(self) -> Iterator[str]:
        return iter(NAMES)

    def __len__(self) -> int:
        return len(NAMES)


STAGES = StageTable()


def __getattr__(name: str) -> Any:
    """A stage's module (`stages.infer.run(...)`) or a shared helper (`stages.CHECKPOINT`), imported on first use."""
    helpers = {"CHECKPOINT": "_files", "join_logit_parts": "infer"}
    if name in helpers:
        return getattr(importlib.import_module(f"{__name__}.{helpers[name]}"), name)
    if name in {module_name(stage) for stage in NAMES}:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CHECKPOINT", "MODEL_FREE", "NAMES", "STAGES", "join_logit_parts", "module_name"]
