"""The teacher: supervised training on the labeled split, generation 0 of the chain."""

from __future__ import annotations

from typing import Any

from selftrain import artifacts, distributed
from selftrain.params import Params
from selftrain.promoted import record
from selftrain.stages._files import file_hash_in
from selftrain.stages._training import Training, run_training
from selftrain.steps.supervised import SupervisedStep


def run(params: Params, *, data: str, out: str, promoted: str, resume: str | None = None) -> dict[str, Any]:
    """Train the teacher with cross-entropy on the labeled split (generation 0).

    Writes model.safetensors, log.csv and generation 0's promotion record naming it. Checkpoints every
    runtime.checkpoint_every steps to --resume (default: OUT.resume) and resumes from there when restarted."""
    p = params.teacher
    inputs = {"train": p.model_dump(), "labeled": file_hash_in(data, "labeled.npz")}
    job = Training(params, model=p.model, noise=p, data=data, out=out, desc="teacher", inputs=inputs, resume=resume)
    summary = run_training(job, lambda run: SupervisedStep(run.student, p, run.labeled, run.ctx, params.seed))
    if distributed.world().main:
        artifacts.write_json(
            promoted, record("gen0", summary["checkpoint"], p.model, True, "generation 0: the supervised teacher", [])
        )
    return summary
