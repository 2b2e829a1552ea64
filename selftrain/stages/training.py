"""Training a generation's student, by any method of the registry (selftrain.methods), and the run both it and the
teacher share: a fresh model, a step built for it, the one loop (selftrain.train.fit), the outputs.

A method's stage loads what the method consumes (filter-balance's pseudo-labels, infer's stored logits, or only the
teacher), the method's step class builds itself from a `StudentRun`, and `run_training` does the rest. A new method
whose stage is train-student needs nothing here.
"""

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
from selftrain.promote import resolve
from selftrain.stages import STAGES
from selftrain.stages.files import CHECKPOINT, file_hash_in, write_log_csv
from selftrain.stages.inference import stored_log_probs
from selftrain.stages.labeling import load_pseudo

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
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    return train.Context(device, world, params.runtime.num_workers)


def new_model(params: Params, p: TrainParams, model_name: str, labeled: Split, init: str | None) -> tuple[nn.Module, models.ModelSpec]:
    """A fresh `model_name` with `p`'s dropout and stochastic depth, optionally initialised from a checkpoint."""
    spec = models.ModelSpec(model_name, len(labeled.classes), labeled.images.shape[3], labeled.images.shape[1], labeled.classes)
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
    fingerprint = {"model": job.model, "seed": params.seed, "init": job.init and artifacts.content_hash(job.init), **job.inputs}
    step = build(train.StudentRun(params, ctx, net, labeled, val, **job.consumed))
    kept, rows, resumed_from = train.fit(
        step, ctx, params.seed, log_every=step.log_every, val=val, val_every=step.val_every, ema_decay=step.ema_decay, desc=job.desc,
        resume=resume, fingerprint=artifacts.sha256_bytes(json.dumps(fingerprint, sort_keys=True).encode()),
        checkpoint_every=step.checkpoint_every or params.runtime.checkpoint_every,
    )  # fmt: skip
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
    summary = {"model": job.model, **extra, "val_top1": logs["log.csv"][-1]["val_top1"], "resumed_from_step": resumed_from, "checkpoint": checkpoint}
    log.info("%s: %s", job.desc, summary)
    return summary


def _student_init(params: Params, teacher: str | None) -> str | None:
    p = params.student
    if p.init == "teacher":
        if teacher is None:
            raise ValueError("student.init is 'teacher' but no --teacher was given")
        return resolve(teacher)[0]
    return p.init_checkpoint if p.init == "checkpoint" else None


def _train_student(
    params: Params, method: methods.Method, generation: str, data: str, out: str, *, teacher: str | None, pseudo: str | None,
    logits_store: str | None, resume: str | None,
) -> dict[str, Any]:  # fmt: skip
    """The generation's student by `method`: load what it consumes, then `run_training` with its step."""
    unlabeled = load_split(data, "unlabeled")
    consumed: dict[str, Any] = {"unlabeled": unlabeled}
    inputs: dict[str, Any] = {"method": method.name, "generation": generation, "labeled": file_hash_in(data, "labeled.npz"),
                              "unlabeled": file_hash_in(data, "unlabeled.npz"), **{s: params.value(s) for s in method.sections}}  # fmt: skip
    if method.consumes == "pseudo_labels":
        if pseudo is None:
            raise ValueError(f"{generation} is method {method.name}: give --pseudo (filter-balance's output)")
        rows, targets = load_pseudo(pseudo, len(unlabeled.classes))
        consumed["pseudo"], consumed["pseudo_rows"], inputs["pseudo"] = (unlabeled.images[rows], targets), rows, artifacts.content_hash(pseudo)
        if targets.shape[1] != len(unlabeled.classes):
            raise ValueError(f"the pseudo-labels have {targets.shape[1]} classes, the data has {len(unlabeled.classes)}")
    elif method.consumes == "logits":
        if logits_store is None:
            raise ValueError(f"{generation} is method {method.name}: give --logits-store (infer's output)")
        consumed["stored"], inputs["logits"] = stored_log_probs(logits_store, data, unlabeled), artifacts.content_hash(logits_store)
    if teacher is not None:
        consumed["teacher"] = resolve(teacher)[0]
        inputs["teacher"] = artifacts.content_hash(consumed["teacher"])
    job = Training(
        params, model=params.generation(generation).model, noise=params.student, data=data, out=out, inputs=inputs, resume=resume,
        desc=f"{generation} {method.name.replace('_', ' ')}", init=_student_init(params, teacher), consumed=consumed,
    )  # fmt: skip
    return run_training(job, methods.step_class(method.name).build)


def train_student(
    params: Params, *, generation: str, data: str, teacher: str, out: str, pseudo: str | None = None, logits_store: str | None = None,
    resume: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Train the generation's noised student on labeled and pseudo-labeled batches jointly.

    Method noisy_student: the pseudo-labels of --pseudo (filter-balance's output); method distill: every
    unlabeled image with the teacher's stored outputs of --logits-store as targets, under student.loss
    (kd, dist, soft_ce); method fixmatch: every unlabeled image, labelled by the student's own confident
    predictions on weak views (methods.fixmatch params; --teacher only for student.init: teacher). Writes
    model.safetensors and log.csv. Checkpoints every runtime.checkpoint_every steps (fixmatch:
    methods.fixmatch.checkpoint_every) to --resume (default: OUT.resume) and resumes from there when restarted."""
    method = methods.get(params.generation(generation).method)
    if method.stage != "train-student":
        raise ValueError(f"{generation} is method {method.name}: its stage is {method.stage}, not train-student")
    return _train_student(params, method, generation, data, out, teacher=teacher, pseudo=pseudo, logits_store=logits_store, resume=resume)


def train_mpl(params: Params, *, generation: str, data: str, teacher: str, out: str, resume: str | None = None) -> dict[str, Any]:
    """Meta Pseudo Labels: teacher and student trained together, then the student finetuned on labeled data.

    The student learns from the teacher's pseudo-labels of strongly augmented unlabeled images; the teacher
    (starting from --teacher) from the change this made to the student's labeled loss, plus labeled CE and UDA.
    Checkpoints every methods.mpl.checkpoint_every steps to --resume (default: OUT.resume) and resumes from there when
    restarted. Writes model.safetensors (the student), mpl_teacher.safetensors, mpl_log.csv and log.csv (the finetune)."""
    return _train_student(params, methods.get("mpl"), generation, data, out, teacher=teacher, pseudo=None, logits_store=None, resume=resume)


def train_reduced_mpl(
    params: Params, *, generation: str, data: str, logits_store: str, out: str, teacher: str | None = None, resume: str | None = None
) -> dict[str, Any]:
    """Reduced MPL: MPL whose teacher is a small MLP over the large teacher's stored logits.

    The large teacher's outputs come from --logits-store (infer's output); it is never run again. --teacher is
    needed only when student.init is 'teacher'. Checkpoints and outputs as train-mpl."""
    method = methods.get("reduced_mpl")
    return _train_student(params, method, generation, data, out, teacher=teacher, pseudo=None, logits_store=logits_store, resume=resume)


def train_generation(params: Params, *, generation: str, data: str, teacher: str, logits_store: str, pseudo: str, out: str) -> dict[str, Any]:
    """Train the generation's student by the method params.generations gives it (what dvc.yaml runs): the method's
    stage (selftrain.methods), e.g. train-student for noisy_student and distill, train-mpl for mpl."""
    method = methods.get(params.generation(generation).method)
    available = {"pseudo": pseudo, "logits_store": logits_store}
    inputs = {k: available[k] for k in method.stage_inputs}
    return STAGES[method.stage](params, generation=generation, data=data, teacher=teacher, out=out, **inputs)
