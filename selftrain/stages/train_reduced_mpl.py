"""train-reduced-mpl: a generation's student by reduced MPL."""

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
    logits_store: str,
    out: str,
    teacher: str | None = None,
    resume: str | None = None,
) -> dict[str, Any]:
    """Reduced MPL: MPL whose teacher is a small MLP over the large teacher's stored logits.

    The large teacher's outputs come from --logits-store (infer's output); it is never run again. --teacher is
    needed only when student.init is 'teacher'. Checkpoints and outputs as train-mpl."""
    method = methods.get("reduced_mpl")
    return train_by_method(
        params, method, generation, data, out, teacher=teacher, pseudo=None, logits_store=logits_store, resume=resume
    )
