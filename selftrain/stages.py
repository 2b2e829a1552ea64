"""The stages: pure functions of (params, input URIs) that write output URIs and return a small summary.

Each runs the same whether DVC (`selftrain <stage>` in dvc.yaml), Prefect (tasks/) or a
Kubernetes Job called it; none reads globals or the environment for what it computes.
URIs may be local paths or s3://...; every output is written atomically.
"""
from __future__ import annotations

import csv
import io
import logging
from typing import Any

import numpy as np

from selftrain import artifacts, logits, models, promote as promotion, pseudo_labels, report as reporting, runtime, train
from selftrain.data import has_split, load_split, save_split
from selftrain.data.splits import make_splits
from selftrain.evaluate import accuracy
from selftrain.inference import iter_logits
from selftrain.params import Params, TrainParams

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


def _train_model(
    params: Params, p: TrainParams, model_name: str, data: str, out: str, *, pseudo: str | None = None, init: str | None = None, desc: str
) -> tuple[dict[str, Any], str]:
    """Train `model_name` with `p` (plus pseudo-labels for a student); returns (summary, checkpoint URI)."""
    labeled, val = load_split(data, "labeled"), load_split(data, "val")
    spec = models.ModelSpec(model_name, len(labeled.classes), labeled.images.shape[3], labeled.images.shape[1], labeled.classes)
    device = runtime.pick_device(params.runtime.device)
    runtime.seed_everything(params.seed)
    net = models.create(spec, p.drop_rate, p.drop_path_rate)
    if init is not None:
        models.init_from(net, spec, init)
    net = runtime.place(net, device, params.runtime.compile)
    pseudo_set = None
    if pseudo is not None:
        unlabeled = load_split(data, "unlabeled")
        chosen = artifacts.load_arrays(artifacts.join(pseudo, "pseudo.npz"))
        if chosen["targets"].shape[1] != len(labeled.classes):
            raise ValueError(f"pseudo-labels in '{pseudo}' have {chosen['targets'].shape[1]} classes, the data has {len(labeled.classes)}")
        pseudo_set = (unlabeled.images[chosen["rows"]], chosen["targets"])
    kept, rows = train.fit(
        net, p, labeled, device, params.seed, pseudo=pseudo_set, val=val, num_workers=params.runtime.num_workers, desc=desc
    )
    checkpoint = artifacts.join(out, CHECKPOINT)
    with artifacts.atomic_dir(out) as staging:
        models.save_checkpoint(artifacts.join(staging, CHECKPOINT), kept, spec)
        _write_log_csv(artifacts.join(staging, "log.csv"), rows)
    summary = {"model": model_name, "epochs": p.epochs, "val_top1": rows[-1]["val_top1"], "checkpoint": checkpoint}
    log.info("%s: %s", desc, summary)
    return summary, checkpoint


def train_teacher(params: Params, *, data: str, out: str, promoted: str) -> dict[str, Any]:
    """Train the teacher with cross-entropy on the labeled split (generation 0); writes model.safetensors, log.csv
    and generation 0's promotion record naming it."""
    summary, checkpoint = _train_model(params, params.teacher, params.teacher.model, data, out, desc="teacher")
    rec = promotion.record("gen0", checkpoint, params.teacher.model, True, "generation 0: the supervised teacher", [])
    artifacts.write_json(promoted, rec)
    return summary


def infer(params: Params, *, teacher: str, data: str, out: str) -> dict[str, Any]:
    """Run the teacher (eval mode, no augmentation) on every unlabeled image; writes a sharded float16 logit store."""
    model, _ = promotion.resolve(teacher)
    net, spec = models.load_checkpoint(model)
    unlabeled = load_split(data, "unlabeled")
    if unlabeled.images.shape[1:] != (spec.image_size, spec.image_size, spec.in_chans):
        raise ValueError(f"unlabeled images are {unlabeled.images.shape[1:]}, the model '{model}' expects {spec.image_size}x{spec.image_size}x{spec.in_chans}")
    device = runtime.pick_device(params.runtime.device)
    net = runtime.place(net, device)
    p = params.infer
    with artifacts.atomic_dir(out) as staging:
        writer = logits.LogitWriter(
            staging, spec.num_classes, p.topk, p.shard_size,
            teacher_sha256=artifacts.content_hash(model), unlabeled_sha256=_file_hash_in(data, "unlabeled.npz"),
        )
        for rows, out_logits in iter_logits(net, unlabeled.images, p.batch_size, device, desc="infer"):
            writer.add(unlabeled.ids[rows], out_logits)
        header = writer.close()
    summary = {"images": header["count"], "shards": len(header["shards"]), "k": header["k"]}
    log.info("infer: %s", summary)
    return summary


def filter_balance(params: Params, *, logits_store: str, data: str, out: str) -> dict[str, Any]:
    """Filter stored teacher outputs by confidence, balance classes, and write soft or hard pseudo-labels."""
    stored = logits.read_store(logits_store, unlabeled_sha256=_file_hash_in(data, "unlabeled.npz"))
    unlabeled = load_split(data, "unlabeled")
    if not np.array_equal(stored.ids, unlabeled.ids):
        raise logits.LogitStoreError(f"'{logits_store}' rows do not line up with the unlabeled split's ids: rerun infer")
    chosen = pseudo_labels.select(stored.dense_log_probs(), params.pseudo_labels, params.seed, unlabeled.classes)
    with artifacts.atomic_dir(out) as staging:
        artifacts.save_arrays(
            artifacts.join(staging, "pseudo.npz"), rows=chosen.rows, ids=unlabeled.ids[chosen.rows], targets=chosen.targets, probs=chosen.probs
        )
        artifacts.write_json(artifacts.join(staging, "counts.json"), chosen.stats)
    log.info("filter-balance: %s", chosen.stats["total"])
    return chosen.stats["total"]


def train_student(params: Params, *, generation: str, data: str, pseudo: str, teacher: str, out: str) -> dict[str, Any]:
    """Train the generation's noised student on labeled and pseudo-labeled batches jointly; writes model.safetensors and log.csv."""
    p = params.student
    init = {"scratch": None, "teacher": promotion.resolve(teacher)[0], "checkpoint": p.init_checkpoint}[p.init]
    summary, _ = _train_model(params, p, params.generation_model(generation), data, out, pseudo=pseudo, init=init, desc=f"{generation} student")
    return summary


def evaluate(params: Params, *, teacher: str, student: str, data: str, out: str) -> dict[str, Any]:
    """Clean top-1 (and top-5) of teacher and student on val and test; writes metrics.json."""
    device = runtime.pick_device(params.runtime.device)
    val, test = load_split(data, "val"), load_split(data, "test")
    metrics: dict[str, Any] = {}
    for role, uri in (("teacher", promotion.resolve(teacher)[0]), ("student", student)):
        net, spec = models.load_checkpoint(uri)
        net = runtime.place(net, device)
        v = accuracy(net, val, params.evaluate.batch_size, device)
        t = accuracy(net, test, params.evaluate.batch_size, device)
        metrics[role] = {
            "model": spec.name, "val_top1": v["top1"], **{f"test_{k}": x for k, x in t.items()}, "checkpoint": uri,
            "checkpoint_sha256": artifacts.content_hash(uri),
        }
    metrics["student_minus_teacher"] = {"test_top1": metrics["student"]["test_top1"] - metrics["teacher"]["test_top1"]}
    artifacts.write_json(out, metrics)
    log.info("evaluate: teacher test %.4f, student test %.4f", metrics["teacher"]["test_top1"], metrics["student"]["test_top1"])
    return metrics


def promote(params: Params, *, generation: str, metrics: str, teacher: str, out: str) -> dict[str, Any]:
    """Record the next generation's teacher: the student if it beats the teacher on val, else the teacher (and the chain stops)."""
    m = artifacts.read_json(metrics)
    _, teacher_record = promotion.resolve(teacher)
    if m["teacher"]["checkpoint_sha256"] != (teacher_record or {"sha256": artifacts.content_hash(teacher)})["sha256"]:
        raise artifacts.ArtifactError(f"'{metrics}' was computed for another teacher than '{teacher}': rerun evaluate")
    passed, reason = promotion.decide(m, params.promote)
    role = "student" if passed else "teacher"
    row = {
        "generation": generation,
        "teacher_model": m["teacher"]["model"],
        "student_model": m["student"]["model"],
        **{f"{r}_{k}": m[r][k] for r in ("teacher", "student") for k in ("val_top1", "test_top1")},
        "promoted": role,
    }
    history = (teacher_record or {"history": []})["history"] + [row]
    rec = promotion.record(
        generation, m[role]["checkpoint"], m[role]["model"], passed, reason, history,
        promoted=role, metric=params.promote.metric, teacher=m["teacher"][params.promote.metric], student=m["student"][params.promote.metric],
    )
    if rec["sha256"] != m[role]["checkpoint_sha256"]:
        raise artifacts.ArtifactError(f"'{rec['checkpoint']}' changed since '{metrics}' was computed: rerun evaluate")
    artifacts.write_json(out, rec)
    log.info("promote %s: %s", generation, reason)
    return rec


def report(params: Params, *, promoted: str, pseudo: str, out: str) -> dict[str, Any]:
    """Tables and plots of the chain so far: accuracy per generation, pseudo-label confidence, per-class counts."""
    rec = promotion.read_record(promoted)
    counts = artifacts.read_json(artifacts.join(pseudo, "counts.json"))
    with artifacts.atomic_dir(out) as staging:
        files = reporting.write_report(staging, rec, counts)
    return {"generation": rec["generation"], "files": files, "table": reporting.history_table(rec)}


STAGES = {
    "prepare": prepare,
    "train-teacher": train_teacher,
    "infer": infer,
    "filter-balance": filter_balance,
    "train-student": train_student,
    "evaluate": evaluate,
    "promote": promote,
    "report": report,
}
