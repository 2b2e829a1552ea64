"""The stages: pure functions of (params, input URIs) that write output URIs and return a small summary.

Each runs the same whether DVC (`selftrain <stage>` in dvc.yaml), Prefect (tasks/) or a
Kubernetes Job called it; none reads globals or the environment for what it computes.
URIs may be local paths or s3://...; every output is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from selftrain import artifacts, distributed, logits, methods, models, pseudo_labels, runtime, train
from selftrain import lineage as lineages
from selftrain import promote as promotion
from selftrain import report as reporting
from selftrain import twomoons as moons
from selftrain.data import Split, has_split, load_split, read_split, save_split, split_classes, split_column
from selftrain.data.splits import make_splits
from selftrain.evaluate import accuracy
from selftrain.inference import batch_logits, predict_logits
from selftrain.mpl import LogitTeacher
from selftrain.params import GATE_METRICS, Params, StudentParams, TrainParams
from selftrain.robustness import evaluation as robustness
from selftrain.robustness.hard_set import select_hard
from selftrain.steps.supervised import SupervisedStep

log = logging.getLogger("selftrain")

CHECKPOINT = "model.safetensors"


def _write_log_csv(uri: str, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    artifacts.write_bytes(uri, buf.getvalue().encode())


def _file_hash_in(artifact: str, name: str) -> str:
    return artifacts.require_complete(artifact)["files"][name]


def prepare(params: Params, *, out: str) -> dict[str, Any]:
    """Split the data (embedded Fashion-MNIST or your folders) into labeled, unlabeled, val and test, by seed."""
    splits = make_splits(params.data, params.seed)
    summary = {
        "source": params.data.source,
        "classes": list(splits["labeled"].classes),
        "image_shape": list(splits["labeled"].images.shape[1:]),
        "sizes": {name: len(s) for name, s in splits.items()},
        "labeled_per_class": np.bincount(splits["labeled"].labels, minlength=len(splits["labeled"].classes)).tolist(),
    }
    with artifacts.atomic_dir(out) as staging:
        for name in splits:
            save_split(artifacts.join(staging, f"{name}.npz"), splits[name])
        artifacts.write_json(artifacts.join(staging, "summary.json"), summary)
    log.info("prepare: %s", summary["sizes"])
    return summary


def _context(params: Params) -> train.Context:
    """Where training runs: under torchrun the world is joined first, as it picks this process's GPU."""
    world = distributed.world()
    device = runtime.pick_device(params.runtime.device)
    if device.type == "cuda" and world.size > 1:
        device = torch.device("cuda", torch.cuda.current_device())
    return train.Context(device, world, params.runtime.num_workers)


def _new_model(params: Params, p: TrainParams, model_name: str, labeled: Split, init: str | None) -> tuple[nn.Module, models.ModelSpec]:
    """A fresh `model_name` with `p`'s dropout and stochastic depth, optionally initialised from a checkpoint."""
    spec = models.ModelSpec(model_name, len(labeled.classes), labeled.images.shape[3], labeled.images.shape[1], labeled.classes)
    runtime.seed_everything(params.seed)
    net = models.create(spec, p.drop_rate, p.drop_path_rate)
    if init is not None:
        models.init_from(net, spec, init)
    return net, spec


def _train_model(
    params: Params,
    p: TrainParams,
    model_name: str,
    data: str,
    out: str,
    *,
    inputs: dict[str, str | None],
    pseudo_set: tuple[np.ndarray, np.ndarray] | None = None,
    method: str | None = None,
    init: str | None = None,
    resume: str | None = None,
    desc: str,
) -> dict[str, Any]:
    """Train `model_name` with `p` (plus (images, target probabilities) for a student); write model.safetensors and log.csv.

    Checkpoints every runtime.checkpoint_every steps to `resume` (default OUT.resume) and resumes from there
    when the same run (`inputs`: content hashes of what it trains on) is started again."""
    labeled, val = load_split(data, "labeled"), load_split(data, "val")
    ctx = _context(params)
    net, spec = _new_model(params, p, model_name, labeled, init)
    net = runtime.place(net, ctx.device, params.runtime.compile)
    resume = resume or f"{out.rstrip('/')}.resume"
    fingerprint = artifacts.sha256_bytes(
        json.dumps(
            {"model": model_name, "train": p.model_dump(), "seed": params.seed, "init": init and artifacts.content_hash(init), **inputs}, sort_keys=True
        ).encode()
    )
    if pseudo_set is None:
        step: train.Step = SupervisedStep(net, p, labeled, ctx, params.seed)
    else:
        assert isinstance(p, StudentParams) and method is not None
        step = methods.step_class(method)(net, p, labeled, pseudo_set, ctx, params.seed)
    kept, rows, resumed_from = train.fit(
        step,
        ctx,
        params.seed,
        log_every=step.steps_per_epoch,
        val=val,
        val_every=p.val_every,
        ema_decay=p.ema_decay,
        desc=desc,
        resume=resume,
        fingerprint=fingerprint,
        checkpoint_every=params.runtime.checkpoint_every,
    )
    checkpoint, world = artifacts.join(out, CHECKPOINT), ctx.world
    if world.main:
        with artifacts.atomic_dir(out) as staging:
            models.save_checkpoint(artifacts.join(staging, CHECKPOINT), kept, spec)
            _write_log_csv(artifacts.join(staging, "log.csv"), rows)
        artifacts.remove(resume)
    distributed.barrier(world)
    summary = {"model": model_name, "epochs": p.epochs, "val_top1": rows[-1]["val_top1"], "resumed_from_step": resumed_from, "checkpoint": checkpoint}
    log.info("%s: %s", desc, summary)
    return summary


def train_teacher(params: Params, *, data: str, out: str, promoted: str, resume: str | None = None) -> dict[str, Any]:
    """Train the teacher with cross-entropy on the labeled split (generation 0).

    Writes model.safetensors, log.csv and generation 0's promotion record naming it. Checkpoints every
    runtime.checkpoint_every steps to --resume (default: OUT.resume) and resumes from there when restarted."""
    summary = _train_model(
        params, params.teacher, params.teacher.model, data, out, inputs={"labeled": _file_hash_in(data, "labeled.npz")}, resume=resume, desc="teacher"
    )
    if distributed.world().main:
        rec = promotion.record("gen0", summary["checkpoint"], params.teacher.model, True, "generation 0: the supervised teacher", [])
        artifacts.write_json(promoted, rec)
    return summary


def infer(params: Params, *, teacher: str, data: str, out: str, part: int | None = None) -> dict[str, Any]:
    """Run the teacher (eval mode, no augmentation) on every unlabeled image; writes a sharded float16 logit store.

    With infer.parts = N > 1 the unlabeled set is cut into N parts: --part i infers part i only (one pod of
    an Indexed Job); without --part every part not yet done is inferred here, then the parts are joined."""
    model, _ = promotion.resolve(teacher)
    net, spec = models.load_checkpoint(model)
    # the unlabeled split is read batch by batch, never whole: a pool of any size in the memory of a few batches
    images, ids = split_column(data, "unlabeled", "images"), split_column(data, "unlabeled", "ids")
    if images.shape[1:] != (spec.image_size, spec.image_size, spec.in_chans):
        raise ValueError(f"unlabeled images are {images.shape[1:]}, the model '{model}' expects {spec.image_size}x{spec.image_size}x{spec.in_chans}")
    if ids.shape != images.shape[:1]:
        raise ValueError(f"'{images.uri}' holds {images.shape[0]} images but {ids.shape[0]} ids: rerun prepare")
    device = runtime.pick_device(params.runtime.device)
    net = runtime.place(net, device)
    p, hashes, count = params.infer, _store_hashes(model, data), images.shape[0]

    def write(uri: str, rows: slice, desc: str) -> dict[str, Any]:
        batches = -(-len(range(*rows.indices(count))) // p.batch_size)
        with artifacts.atomic_dir(uri) as staging:
            writer = logits.LogitWriter(staging, spec.num_classes, p.topk, p.shard_size, **hashes)
            out = batch_logits(net, images.batches(rows, p.batch_size), device, batches, desc=desc)
            for batch_ids, out_logits in zip(ids.batches(rows, p.batch_size), out, strict=True):
                writer.add(batch_ids, out_logits)
            return writer.close()

    if p.parts == 1 and part is None:
        header = write(out, slice(None), "infer")
    else:
        for i in [int(part)] if part is not None else range(p.parts):
            rows, uri = logits.part_rows(count, i, p.parts), logits.part_uri(out, i, p.parts)
            if part is None and logits.part_done(uri, **hashes):
                log.info("infer: part %d of %d already done", i, p.parts)
                continue
            header = write(uri, rows, f"infer part {i}/{p.parts}")
        if part is None:
            header = logits.merge_parts(out, p.parts, **hashes)
    summary = {"images": header["count"], "shards": len(header["shards"]), "k": header["k"]}
    if part is not None:
        summary["part"] = f"{part} of {p.parts}"
    log.info("infer: %s", summary)
    return summary


def _store_hashes(model: str, data: str) -> dict[str, str]:
    return {"teacher_sha256": artifacts.content_hash(model), "unlabeled_sha256": _file_hash_in(data, "unlabeled.npz")}


def join_logit_parts(params: Params, *, teacher: str, data: str, out: str) -> dict[str, Any]:
    """Join the infer.parts parts that `infer --part i` wrote into the store at `out`; refuses a partial set."""
    header = logits.merge_parts(out, params.infer.parts, **_store_hashes(promotion.resolve(teacher)[0], data))
    return {"images": header["count"], "shards": len(header["shards"]), "k": header["k"]}


def _stored_log_probs(logits_store: str, data: str, unlabeled: Split) -> np.ndarray:
    """The teacher's stored log-probabilities of every unlabeled image, in the unlabeled split's order."""
    stored = logits.read_store(logits_store, unlabeled_sha256=_file_hash_in(data, "unlabeled.npz"))
    if stored.ids is None or not np.array_equal(stored.ids, unlabeled.ids):
        raise logits.LogitStoreError(f"'{logits_store}' rows do not line up with the unlabeled split's ids: rerun infer")
    return stored.dense_log_probs()


def filter_balance(params: Params, *, logits_store: str, data: str, out: str) -> dict[str, Any]:
    """Filter stored teacher outputs by confidence, balance classes, and write soft or hard pseudo-labels.

    Two passes over the store's values and class indices, shard by shard (memory does not grow with the
    unlabeled pool; the split's images are not read); pseudo-labels are written in row order as sparse targets
    (class indices and probabilities), one file per store shard: a row's id is in that shard's ids."""
    classes = split_classes(data, "unlabeled")
    # the header's hash of the unlabeled split ties the store's rows to it: infer writes them in the split's order
    header = logits.open_store(logits_store, unlabeled_sha256=_file_hash_in(data, "unlabeled.npz"))
    if header["num_classes"] != len(classes):
        raise logits.LogitStoreError(f"'{logits_store}' has {header['num_classes']} classes, the data {len(classes)}: rerun infer")

    def chunks() -> Iterator[pseudo_labels.Chunk]:
        for start, part in logits.iter_shards(logits_store, header, with_ids=False):
            yield pseudo_labels.Chunk(start, part.values, part.indices)

    plan, picks = pseudo_labels.two_passes(chunks, params.pseudo_labels, params.seed, classes, workers=min(4, os.cpu_count() or 1))
    # writer threads: shards are written (and fsynced) while the next are picked; at most four wait, so memory stays bounded
    with artifacts.atomic_dir(out) as staging, ThreadPoolExecutor(2) as writer:
        writes: list[Future[None]] = []
        for i, picked in enumerate(picks):
            writes.append(
                writer.submit(
                    artifacts.save_arrays,
                    artifacts.join(staging, f"pseudo-{i:05d}.npz"),
                    rows=picked.rows,
                    target_indices=picked.target_indices,
                    target_values=picked.target_values,
                )
            )
            if len(writes) > 4:
                writes.pop(0).result()
        for w in writes:
            w.result()
        artifacts.write_json(artifacts.join(staging, "counts.json"), plan.stats)
    log.info("filter-balance: %s", plan.stats["total"])
    return plan.stats["total"]


def _load_pseudo(uri: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """filter-balance's output: the rows (with copies) and their dense (n, C) targets."""
    chosen = artifacts.load_shards(uri, "pseudo")
    return chosen["rows"], pseudo_labels.dense(chosen["target_indices"], chosen["target_values"], num_classes)


def _student_init(params: Params, teacher: str | None) -> str | None:
    p = params.student
    if p.init == "teacher":
        if teacher is None:
            raise ValueError("student.init is 'teacher' but no --teacher was given")
        return promotion.resolve(teacher)[0]
    return p.init_checkpoint if p.init == "checkpoint" else None


def train_student(
    params: Params,
    *,
    generation: str,
    data: str,
    teacher: str,
    out: str,
    pseudo: str | None = None,
    logits_store: str | None = None,
    resume: str | None = None,
) -> dict[str, Any]:
    """Train the generation's noised student on labeled and pseudo-labeled batches jointly.

    Method noisy_student: the pseudo-labels of --pseudo (filter-balance's output); method distill: every
    unlabeled image with the teacher's stored outputs of --logits-store as targets, under student.loss
    (kd, dist, soft_ce). Writes model.safetensors and log.csv. Checkpoints every runtime.checkpoint_every steps
    to --resume (default: OUT.resume) and resumes from there when restarted."""
    method = params.generation(generation).method
    unlabeled = load_split(data, "unlabeled")
    if method == "distill":
        if logits_store is None:
            raise ValueError(f"{generation} is method distill: give --logits-store (infer's output)")
        pseudo_set = (unlabeled.images, np.exp(_stored_log_probs(logits_store, data, unlabeled)))
    else:
        if pseudo is None:
            raise ValueError(f"{generation} is method {method}: give --pseudo (filter-balance's output)")
        rows, targets = _load_pseudo(pseudo, len(unlabeled.classes))
        pseudo_set = (unlabeled.images[rows], targets)
    classes = len(load_split(data, "labeled").classes)
    if pseudo_set[1].shape[1] != classes:
        raise ValueError(f"the pseudo-labels have {pseudo_set[1].shape[1]} classes, the data has {classes}")
    source = logits_store if method == "distill" else pseudo
    assert source is not None
    return _train_model(
        params,
        params.student,
        params.generation(generation).model,
        data,
        out,
        inputs={"method": method, "labeled": _file_hash_in(data, "labeled.npz"), "pseudo": artifacts.content_hash(source), "generation": generation},
        pseudo_set=pseudo_set,
        method=method,
        init=_student_init(params, teacher),
        resume=resume,
        desc=f"{generation} student ({method})",
    )


def _run_mpl(
    params: Params,
    method: str,
    generation: str,
    data: str,
    out: str,
    resume: str | None,
    teacher_net: nn.Module,
    teacher_hash: str,
    init: str | None,
    stored: np.ndarray | None,
) -> dict[str, Any]:
    """MPL or reduced MPL steps (resumable, data-parallel under torchrun), the student's finetune on labeled data, then
    the outputs."""
    p, g = params.mpl, params.generation(generation)
    labeled, val, unlabeled = (load_split(data, name) for name in ("labeled", "val", "unlabeled"))
    ctx = _context(params)
    student, spec = _new_model(params, params.student, g.model, labeled, init)
    student, teacher_net = runtime.place(student, ctx.device, params.runtime.compile), teacher_net.to(ctx.device)
    resume = resume or f"{out.rstrip('/')}.resume"
    fingerprint = artifacts.sha256_bytes(
        json.dumps(
            {
                "method": method,
                "teacher": teacher_hash,
                "model": g.model,
                "mpl": p.model_dump(),
                "student": params.student.model_dump(),
                "seed": params.seed,
                "labeled": _file_hash_in(data, "labeled.npz"),
                "unlabeled": _file_hash_in(data, "unlabeled.npz"),
            },
            sort_keys=True,
        ).encode()
    )
    desc = f"{generation} {method.replace('_', ' ')}"
    stored_logits = {} if stored is None else {"stored": stored}
    step = methods.step_class(method)(student, teacher_net, p, params.student, labeled, unlabeled.images, ctx, params.seed, **stored_logits)
    student, steps, resumed_from = train.fit(
        step,
        ctx,
        params.seed,
        log_every=p.checkpoint_every,
        val=val,
        ema_decay=p.ema_decay,
        desc=desc,
        resume=resume,
        fingerprint=fingerprint,
        checkpoint_every=p.checkpoint_every,
    )
    if p.finetune_epochs:
        finetune = TrainParams(
            epochs=p.finetune_epochs,
            batch_size=p.batch_size,
            lr=p.finetune_lr,
            weight_decay=p.weight_decay,
            label_smoothing=params.student.label_smoothing,
            augment="s1",
        )
        tune = SupervisedStep(student, finetune, labeled, ctx, params.seed)
        student, rows, _ = train.fit(tune, ctx, params.seed, log_every=tune.steps_per_epoch, val=val, desc=f"{desc} finetune")
    else:
        rows = [{"epoch": 0, "val_top1": accuracy(student, val, params.evaluate.batch_size, ctx.device)["top1"]}]
    if not ctx.world.main:
        distributed.barrier(ctx.world)
        return {"model": g.model, "method": method, "resumed_from_step": resumed_from}
    checkpoint = artifacts.join(out, CHECKPOINT)
    with artifacts.atomic_dir(out) as staging:
        models.save_checkpoint(artifacts.join(staging, CHECKPOINT), student, spec)
        teacher_state = {k: v.detach().cpu().contiguous() for k, v in getattr(teacher_net, "_orig_mod", teacher_net).state_dict().items()}
        artifacts.write_bytes(artifacts.join(staging, "mpl_teacher.safetensors"), safetensors.torch.save(teacher_state))
        _write_log_csv(artifacts.join(staging, "mpl_log.csv"), steps)
        _write_log_csv(artifacts.join(staging, "log.csv"), rows)
    artifacts.remove(resume)
    distributed.barrier(ctx.world)
    summary = {
        "model": g.model,
        "method": method,
        "steps": p.steps,
        "resumed_from_step": resumed_from,
        "mpl_val_top1": steps[-1]["val_top1"],
        "val_top1": rows[-1]["val_top1"],
        "checkpoint": checkpoint,
    }
    log.info("%s: %s", desc, summary)
    return summary


def train_mpl(params: Params, *, generation: str, data: str, teacher: str, out: str, resume: str | None = None) -> dict[str, Any]:
    """Meta Pseudo Labels: teacher and student trained together, then the student finetuned on labeled data.

    The student learns from the teacher's pseudo-labels of strongly augmented unlabeled images; the teacher
    (starting from --teacher) from the change this made to the student's labeled loss, plus labeled CE and UDA.
    Checkpoints every mpl.checkpoint_every steps to --resume (default: OUT.resume) and resumes from there when
    restarted. Writes model.safetensors (the student), mpl_teacher.safetensors, mpl_log.csv and log.csv (the finetune)."""
    checkpoint = promotion.resolve(teacher)[0]
    teacher_net, _ = models.load_checkpoint(checkpoint)
    return _run_mpl(params, "mpl", generation, data, out, resume, teacher_net, artifacts.content_hash(checkpoint), _student_init(params, teacher), None)


def train_reduced_mpl(
    params: Params, *, generation: str, data: str, logits_store: str, out: str, teacher: str | None = None, resume: str | None = None
) -> dict[str, Any]:
    """Reduced MPL: MPL whose teacher is a small MLP over the large teacher's stored logits.

    The large teacher's outputs come from --logits-store (infer's output); it is never run again. --teacher is
    needed only when student.init is 'teacher'. Checkpoints and outputs as train-mpl."""
    stored = _stored_log_probs(logits_store, data, load_split(data, "unlabeled"))
    runtime.seed_everything(params.seed)  # the MLP teacher's initial weights, like every other model's, come from the seed
    teacher_net = LogitTeacher(stored.shape[1], params.mpl.reduced_hidden)
    return _run_mpl(
        params, "reduced_mpl", generation, data, out, resume, teacher_net, artifacts.content_hash(logits_store), _student_init(params, teacher), stored
    )


def train_generation(params: Params, *, generation: str, data: str, teacher: str, logits_store: str, pseudo: str, out: str) -> dict[str, Any]:
    """Train the generation's student by the method params.generations gives it (what dvc.yaml runs): the method's
    stage (selftrain.methods), e.g. train-student for noisy_student and distill, train-mpl for mpl."""
    method = methods.get(params.generation(generation).method)
    available = {"pseudo": pseudo, "logits_store": logits_store}
    inputs = {k: available[k] for k in method.stage_inputs}
    return STAGES[method.stage](params, generation=generation, data=data, teacher=teacher, out=out, **inputs)


def make_robustness_sets(params: Params, *, data: str, out: str) -> dict[str, Any]:
    """Build the -C set (test images under 15 corruptions x 5 severities) and the -P sequences from the test
    split, deterministic by seed; writes corruptions/ and perturbations/ (one .npz per corruption or perturbation)
    and grid.png (one image under each)."""
    test = load_split(data, "test")
    corrupted = robustness.build_corruptions(test, params.robustness, params.seed)
    sequences = robustness.build_perturbations(test, params.robustness, params.seed)
    summary: dict[str, Any] = {
        "corruption_images": len(corrupted["rows"]),
        "perturbation_images": len(sequences["rows"]),
        "frames": params.robustness.frames,
        "corruptions": [k for k in corrupted if k not in ("rows", "labels", "clean")],
        "perturbations": [k for k in sequences if k not in ("rows", "labels")],
    }
    grid = reporting.corruption_grid(corrupted["clean"], {k: corrupted[k] for k in summary["corruptions"]})
    with artifacts.atomic_dir(out) as staging:
        artifacts.save_array_files(artifacts.join(staging, "corruptions"), **corrupted)
        artifacts.save_array_files(artifacts.join(staging, "perturbations"), **sequences)
        artifacts.write_bytes(artifacts.join(staging, "grid.png"), grid)
        artifacts.write_json(artifacts.join(staging, "summary.json"), summary)
    log.info("make-robustness-sets: %s", {k: v for k, v in summary.items() if isinstance(v, int)})
    return summary


def robustness_reference(params: Params, *, data: str, sets: str, reference_model: str, out: str) -> dict[str, Any]:
    """Freeze the reference model's part: the -A set (holdout images it gets wrong) and its own -C/-P results,
    which normalise every later CE and FR. The reference is --reference-model unless params robustness.reference names one."""
    uri = params.robustness.reference or reference_model
    checkpoint, rec = promotion.resolve(uri)
    net, spec = models.load_checkpoint(checkpoint)
    device = runtime.pick_device(params.runtime.device)
    net = runtime.place(net, device)
    hard, hard_info = None, None
    if has_split(data, "holdout"):
        pool = load_split(data, "holdout")
        predictions = predict_logits(net, pool.images, params.evaluate.batch_size, device, desc="reference on holdout").argmax(1).numpy()
        rows = select_hard(pool.labels, predictions, params.robustness.hard_images, params.seed)
        hard = Split(pool.images[rows], pool.labels[rows], pool.ids[rows], pool.classes)
        hard_info = {"pool": len(pool), "reference_wrong": int((predictions != pool.labels).sum()), "size": len(rows)}
    else:
        log.warning("robustness-reference: '%s' has no holdout split, so there is no -A set", data)
    corrupted, sequences = robustness.load_sets(sets)
    raw = robustness.measure(net, corrupted, sequences, hard, params.evaluate.batch_size, device, desc="reference")
    result = {
        "name": rec["generation"] if rec else checkpoint,
        "model": spec.name,
        "checkpoint": checkpoint,
        "sha256": artifacts.content_hash(checkpoint),
        "sets_sha256": artifacts.content_hash(sets),
        "hard_set": hard_info,
        "raw": raw,
    }
    with artifacts.atomic_dir(out) as staging:
        if hard is not None:
            save_split(artifacts.join(staging, "hard.npz"), hard)
        artifacts.write_json(artifacts.join(staging, "reference.json"), result)
    log.info("robustness-reference: %s, -A set %s", result["name"], hard_info)
    return {k: result[k] for k in ("name", "model", "checkpoint", "hard_set")}


def evaluate(params: Params, *, teacher: str, student: str, data: str, out: str, sets: str | None = None, reference: str | None = None) -> dict[str, Any]:
    """Clean top-1 (and top-5) of teacher and student on val and test, and with --sets and --reference their
    -C/-P/-A robustness (mCE, relative mCE, mFR, mT5D, -A top-1, per corruption x severity); writes metrics.json."""
    if (sets is None) != (reference is None):
        raise ValueError("evaluate: give both --sets (make-robustness-sets) and --reference (robustness-reference), or neither")
    device = runtime.pick_device(params.runtime.device)
    val, test = load_split(data, "val"), load_split(data, "test")
    ref = hard = None
    if sets is not None:
        assert reference is not None
        artifacts.require_complete(reference)
        ref = artifacts.read_json(artifacts.join(reference, "reference.json"))
        if ref["sets_sha256"] != artifacts.content_hash(sets):
            raise artifacts.ArtifactError(f"'{reference}' was measured on other robustness sets than '{sets}': rerun robustness-reference")
        corrupted, sequences = robustness.load_sets(sets)
        hard = read_split(artifacts.join(reference, "hard.npz")) if ref["hard_set"] else None
    metrics: dict[str, Any] = {}
    for role, uri in (("teacher", promotion.resolve(teacher)[0]), ("student", student)):
        net, spec = models.load_checkpoint(uri)
        net = runtime.place(net, device)
        v = accuracy(net, val, params.evaluate.batch_size, device)
        t = accuracy(net, test, params.evaluate.batch_size, device)
        metrics[role] = {
            "model": spec.name,
            "val_top1": v["top1"],
            **{f"test_{k}": x for k, x in t.items()},
            "checkpoint": uri,
            "checkpoint_sha256": artifacts.content_hash(uri),
        }
        if ref is not None:
            raw = robustness.measure(net, corrupted, sequences, hard, params.evaluate.batch_size, device, desc=role)
            summary = robustness.summarize(raw, ref["raw"])
            metrics[role].update(summary.pop("headline"))
            metrics[role]["robustness"] = summary
    metrics["student_minus_teacher"] = {k: metrics["student"][k] - metrics["teacher"][k] for k in ("test_top1", *GATE_METRICS) if k in metrics["teacher"]}
    if ref is not None:
        metrics["robustness_reference"] = {k: ref[k] for k in ("name", "model", "checkpoint", "sha256")}
    artifacts.write_json(out, metrics)
    log.info("evaluate: teacher test %.4f, student test %.4f", metrics["teacher"]["test_top1"], metrics["student"]["test_top1"])
    return _brief(metrics)


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    """metrics without the per-corruption detail: what the CLI prints and a Prefect task returns."""
    return {k: ({kk: vv for kk, vv in v.items() if kk != "robustness"} if isinstance(v, dict) else v) for k, v in metrics.items()}


def promote(params: Params, *, generation: str, metrics: str, teacher: str, out: str) -> dict[str, Any]:
    """Record the next generation's teacher: the student if it passes every rule of params promote.rules, else the
    teacher (and the chain stops); the record lists each rule's values and verdict."""
    m = artifacts.read_json(metrics)
    _, teacher_record = promotion.resolve(teacher)
    if m["teacher"]["checkpoint_sha256"] != (teacher_record or {"sha256": artifacts.content_hash(teacher)})["sha256"]:
        raise artifacts.ArtifactError(f"'{metrics}' was computed for another teacher than '{teacher}': rerun evaluate")
    passed, reason, rules = promotion.decide(m, params.promote)
    role = "student" if passed else "teacher"
    row = {
        "generation": generation,
        "teacher_model": m["teacher"]["model"],
        "student_model": m["student"]["model"],
        **{f"{r}_{k}": m[r][k] for r in ("teacher", "student") for k in ("val_top1", "test_top1", "mCE", "mFR", "hard_top1") if k in m[r]},
        "promoted": role,
    }
    history = (teacher_record or {"history": []})["history"] + [row]
    rec = promotion.record(generation, m[role]["checkpoint"], m[role]["model"], passed, reason, history, promoted=role, rules=rules)
    if rec["sha256"] != m[role]["checkpoint_sha256"]:
        raise artifacts.ArtifactError(f"'{rec['checkpoint']}' changed since '{metrics}' was computed: rerun evaluate")
    artifacts.write_json(out, rec)
    log.info("promote %s: %s", generation, reason)
    return rec


def twomoons(params: Params, *, out: str) -> dict[str, Any]:
    """The TwoMoons picture of MPL: supervised vs plain pseudo-labels vs MPL from 6 labeled points.

    One draw of the moons per params twomoons.seeds; writes twomoons.png (the first seed's decision
    boundaries and accuracies) and results.json (accuracy per seed, mean, std)."""
    result = moons.write(out, params.twomoons.seeds, moons.MoonsSetup(steps=params.twomoons.steps))
    return {name: {k: result[name][k] for k in ("mean", "std")} for name in moons.METHODS}


def report(params: Params, *, promoted: str, pseudo: str, metrics: str, out: str) -> dict[str, Any]:
    """Tables and plots of the chain so far: accuracy per generation, pseudo-label confidence, per-class counts,
    and this generation's error vs corruption severity, teacher vs student."""
    rec = promotion.read_record(promoted)
    counts = artifacts.read_json(artifacts.join(pseudo, "counts.json"))
    with artifacts.atomic_dir(out) as staging:
        files = reporting.write_report(staging, rec, counts, artifacts.read_json(metrics))
    return {"generation": rec["generation"], "files": files, "table": reporting.history_table(rec)}


def record_lineage(
    params: Params,
    *,
    generation: str,
    data: str,
    teacher: str,
    logits_store: str,
    pseudo: str,
    student: str,
    metrics: str,
    promoted: str,
    out: str,
    dvc_lock: str | None = None,
) -> dict[str, Any]:
    """Record what made the generation's model: git commit, dvc.lock stage hashes (with --dvc-lock), params, the
    content hashes of its inputs (data, teacher checkpoint, logits, pseudo-labels) and outputs, seeds, package
    versions and machine; writes lineage.json (`selftrain lineage` prints the chain, `selftrain reproduce` rebuilds it)."""
    teacher_record = promotion.read_record(teacher)
    rec = lineages.build(
        generation=generation,
        method=params.generation(generation).method,
        params={k: v for k, v in params.model_dump(mode="json").items() if k in lineages.PARAMS}
        | {"generations": {generation: params.generation(generation).model_dump(mode="json")}},
        seed=params.seed,
        inputs={"data": data, "teacher_checkpoint": teacher_record["checkpoint"], "logits": logits_store, "pseudo": pseudo},
        outputs={"student_checkpoint": student, "metrics": metrics, "promoted": promoted},
        teacher_record=teacher_record,
        metrics=artifacts.read_json(metrics),
        promoted=promotion.read_record(promoted),
        dvc_lock=dvc_lock,
    )
    artifacts.write_json(out, rec)
    return {"generation": generation, "student_checkpoint": rec["outputs"]["student_checkpoint"]["sha256"], "git": rec["git"]}


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
