"""train-generation: what dvc.yaml's train-student runs: the stage of the generation's method."""

from __future__ import annotations

from typing import Any

from selftrain import methods
from selftrain.params import Params
from selftrain.stages import STAGES


def run(
    params: Params, *, generation: str, data: str, teacher: str, logits_store: str, pseudo: str, out: str
) -> dict[str, Any]:
    """Train the generation's student by the method params.generations gives it (what dvc.yaml runs): the method's
    stage (selftrain.methods), e.g. train-student for noisy_student and distill, train-mpl for mpl."""
    method = methods.get(params.generation(generation).method)
    available = {"pseudo": pseudo, "logits_store": logits_store}
    inputs = {k: available[k] for k in method.stage_inputs}
    return STAGES[method.stage](params, generation=generation, data=data, teacher=teacher, out=out, **inputs)
