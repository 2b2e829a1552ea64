"""What the training stages share: a fresh model, a step built for it, the one loop (selftrain.train.fit), the
outputs. train-teacher builds a `Training` and calls `run_training`; the students' stages (train-student, train-mpl,
train-reduced-mpl) call `train_by_method`, which loads what the method consumes (filter-balance's pseudo-labels,
infer's stored logits, or only the teacher) and builds the method's step from a `StudentRun`."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from selftrain import artifacts, distributed, methods, models, runtime, train
from selftrain.data import Split, load_split
from selftrain.params import Params, TrainParams
from selftrain.promoted import resolve
from selftrain.stages._files import CHECKPOINT, file_hash_in, write_log_csv
from selftrain.stages.filter_balance import load_pseudo
from selftrain.stages.infer import stored_log_probs

log = logging.getLogger("selftrain")


@dataclass(frozen=True)
class Training:
    """One training stage's run: which model, with which dropout and stochastic depth (`noise`), from what `init`,
    written where; `inputs` (content hashes and params of what it trains on) fingerprint its resume file."""

    params: Params
    model: str
    noise: TrainParams
    data: str
    out: str
    desc: str
    inputs: dict[str, Any]
    resume: str | None = None
    init: str | None = None
    consumed: dict[str, Any] = field(default_factory=dict)  # StudentRun's unlabeled / teacher / pseudo / stored


def context(params: Params) -> train.Context:
    """Where training runs: under torchrun the world is joined first, as it picks this process's GPU."""
    world = distributed.world()
    device = runtime.pick_device(params.runtime.device)
    if device.type == "cuda" and world.grouped:
        device = torch.device("cuda", torch.cuda.current_device())
    return train.Context(device, world, params.runtime.num_workers)


def new_model(
    params: Params, p: TrainParams, model_name: str, labeled: Split, init: str | None
) -> tuple[nn.Module, models.ModelSpec]:
    """A fresh `model_name` with `p`'s dropout and stochastic depth, optionally initialised from a checkpoint."""
    spec = models.ModelSpec(
        model_name, len(labeled.classes), labeled.images.shape[3], labeled.images.shape[1], labeled.classes
    )
    runtime.seed_everything(params.seed)
    net = models.create(spec, p.drop_rate, p.drop_path_rate)
    if init is not None:
        models.init_from(net, spec, init)
    return net, spec


def run_training(job: Training, build: Any) -> dict[str, Any]:
    """Build the step (`build(StudentRun)`), run it from its checkpoint (OUT.resume by default) to the end, let it
    finish (a finetune, its own files), write model.safetensors and the logs; rank 0 alone writes."""
    params = job.params
    labeled, val = load_split(job.data, "labeled"), load_split(job.data, "val")
    ctx = context(params)
    net, spec = new_model(params, job.noise, job.model, labeled, job.init)
    net = runtime.place(net, ctx.device, params.runtime.compile)
    resume = job.resume or f"{job.out.rstrip('/')}.resume"
    fingerprint = {
        "model": job.model,
        "seed": params.seed,
        "init": job.init and artifacts.content_hash(job.init),
        **job.inputs,
    }
    step = build(train.StudentRun(params, ctx, net, labeled, val, **job.consumed))
    kept, rows, resumed_from = train.fit(
        step,
        ctx,
        params.seed,
        log_every=step.log_every,
        val=val,
        val_every=step.val_every,
        ema_decay=step.ema_decay,
        desc=job.desc,
        resume=resume,
        fingerprint=artifacts.sha256_bytes(json.dumps(fingerprint, sort_keys=True).encode()),
        checkpoint_every=step.checkpoint_every or params.runtime.checkpoint_every,
    )
    kept, logs, files, extra = step.finish(kept, rows, job.desc)
    checkpoint = artifacts.join(job.out, CHECKPOINT)
    if ctx.world.main:
        with artifacts.atomic_dir(job.out) as staging:
            models.save_checkpoint(artifacts.join(staging, CHECKPOINT), kept, spec)
            for name, data in files.items():
                artifacts.write_bytes(artifacts.join(staging, name), data)
            for name, log_rows in logs.items():
                write_log_csv(artifacts.join(staging, name), log_rows)
        artifacts.remove(resume)
    distributed.barrier(ctx.world)
    summary = {
        "model": job.model,
        **extra,
        "val_top1": logs["log.csv"][-1]["val_top1"],
        "resumed_from_step": resumed_from,
        "checkpoint": checkpoint,
    }
    log.info("%s: %s", job.desc, summary)
    return summary


def _student_init(params: Params, teacher: str | None) -> str | None:
    p = params.student
    if p.init == "teacher":
        if teacher is None:
            raise ValueError("student.init is 'teacher' but no --teacher was given")
        return resolve(teacher)[0]
    return p.init_checkpoint if p.init == "checkpoint" else None


def train_by_method(
    params: Params,
    method: methods.Method,
    generation: str,
    data: str,
    out: str,
    *,
    teacher: str | None,
    pseudo: str | None,
    logits_store: str | None,
    resume: str | None,
) -> dict[str, Any]:
    """The generation's student by `method`: load what it consumes, then `run_training` with its step."""
    unlabeled = load_split(data, "unlabeled")
    consumed: dict[str, Any] = {"unlabeled": unlabeled}
    inputs: dict[str, Any] = {
        "method": method.name,
        "generation": generation,
        "labeled": file_hash_in(data, "labeled.npz"),
        "unlabeled": file_hash_in(data, "unlabeled.npz"),
        **{s: params.value(s) for s in method.sections},
    }
    if method.consumes == "pseudo_labels":
        if pseudo is None:
            raise ValueError(f"{generation} is method {method.name}: give --pseudo (filter-balance's output)")
        rows, targets = load_pseudo(pseudo, len(unlabeled.classes))
        consumed["pseudo"], consumed["pseudo_rows"], inputs["pseudo"] = (
            (unlabeled.images[rows], targets),
            rows,
            artifacts.content_hash(pseudo),
        )
        if targets.shape[1] != len(unlabeled.classes):
            raise ValueError(
                f"the pseudo-labels have {targets.shape[1]} classes, the data has {len(unlabeled.classes)}"
            )
    elif method.consumes == "logits":
        if logits_store is None:
            raise ValueError(f"{generation} is method {method.name}: give --logits-store (infer's output)")
        consumed["stored"], inputs["logits"] = (
            stored_log_probs(logits_store, data, unlabeled),
            artifacts.content_hash(logits_store),
        )
    if teacher is not None:
        consumed["teacher"] = resolve(teacher)[0]
        inputs["teacher"] = artifacts.content_hash(consumed["teacher"])
    job = Training(
        params,
        model=params.generation(generation).model,
        noise=params.student,
        data=data,
        out=out,
        inputs=inputs,
        resume=resume,
        desc=f"{generation} {method.name.replace('_', ' ')}",
        init=_student_init(params, teacher),
        consumed=consumed,
    )
    return run_training(job, methods.step_class(method.name).build)
