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

from selftrain import artifacts, logits, models, promote as promotion, pseudo_labels, runtime, train
from selftrain.data import SPLITS, load_split, save_split
from selftrain.data.splits import make_splits
from selftrain.evaluate import accuracy
from selftrain.inference import iter_logits
from selftrain.params import Params

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
        for name in SPLITS:
            save_split(artifacts.join(staging, f"{name}.npz"), splits[name])
        artifacts.write_json(artifacts.join(staging, "summary.json"), summary)
    log.info("prepare: %s", summary["sizes"])
    return summary


def _train_model(params: Params, section: str, data: str, out: str, pseudo: str | None) -> dict[str, Any]:
    p = getattr(params, section)
    labeled, val = load_split(data, "labeled"), load_split(data, "val")
    spec = models.ModelSpec(p.model, len(labeled.classes), labeled.images.shape[3], labeled.images.shape[1], labeled.classes)
    device = runtime.pick_device(params.runtime.device)
    runtime.seed_everything(params.seed)
    model = runtime.place(models.create(spec, p.drop_rate, p.drop_path_rate), device, params.runtime.compile)
    pseudo_set = None
    if pseudo is not None:
        unlabeled = load_split(data, "unlabeled")
        chosen = artifacts.load_arrays(artifacts.join(pseudo, "pseudo.npz"))
        if chosen["targets"].shape[1] != len(labeled.classes):
            raise ValueError(f"pseudo-labels in '{pseudo}' have {chosen['targets'].shape[1]} classes, the data has {len(labeled.classes)}")
        pseudo_set = (unlabeled.images[chosen["rows"]], chosen["targets"])
    rows = train.fit(
        model, p, labeled, device, params.seed, pseudo=pseudo_set, val=val, num_workers=params.runtime.num_workers, desc=section
    )
    with artifacts.atomic_dir(out) as staging:
        models.save_checkpoint(artifacts.join(staging, CHECKPOINT), model, spec)
        _write_log_csv(artifacts.join(staging, "log.csv"), rows)
    summary = {"model": p.model, "epochs": p.epochs, "val_top1": rows[-1]["val_top1"], "checkpoint": artifacts.join(out, CHECKPOINT)}
    log.info("%s: %s", section, summary)
    return summary


def train_teacher(params: Params, *, data: str, out: str) -> dict[str, Any]:
    """Train the teacher with cross-entropy on the labeled split; writes model.safetensors and log.csv."""
    return _train_model(params, "teacher", data, out, pseudo=None)


def infer(params: Params, *, model: str, data: str, out: str) -> dict[str, Any]:
    """Run the teacher (eval mode, no augmentation) on every unlabeled image; writes a sharded float16 logit store."""
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
        artifacts.save_arrays(artifacts.join(staging, "pseudo.npz"), rows=chosen.rows, ids=unlabeled.ids[chosen.rows], targets=chosen.targets)
        artifacts.write_json(artifacts.join(staging, "counts.json"), chosen.stats)
    log.info("filter-balance: %s", chosen.stats["total"])
    return chosen.stats["total"]


def train_student(params: Params, *, data: str, pseudo: str, out: str) -> dict[str, Any]:
    """Train the noised student on labeled and pseudo-labeled batches jointly; writes model.safetensors and log.csv."""
    return _train_model(params, "student", data, out, pseudo=pseudo)


def evaluate(params: Params, *, teacher: str, student: str, data: str, out: str) -> dict[str, Any]:
    """Clean top-1 (and top-5) of teacher and student on val and test; writes metrics.json."""
    device = runtime.pick_device(params.runtime.device)
    val, test = load_split(data, "val"), load_split(data, "test")
    metrics: dict[str, Any] = {}
    for role, uri in (("teacher", teacher), ("student", student)):
        net, _ = models.load_checkpoint(uri)
        net = runtime.place(net, device)
        v = accuracy(net, val, params.evaluate.batch_size, device)
        t = accuracy(net, test, params.evaluate.batch_size, device)
        metrics[role] = {"val_top1": v["top1"], **{f"test_{k}": x for k, x in t.items()}, "checkpoint_sha256": artifacts.content_hash(uri)}
    metrics["student_minus_teacher"] = {"test_top1": metrics["student"]["test_top1"] - metrics["teacher"]["test_top1"]}
    artifacts.write_json(out, metrics)
    log.info("evaluate: teacher test %.4f, student test %.4f", metrics["teacher"]["test_top1"], metrics["student"]["test_top1"])
    return metrics


def promote(params: Params, *, metrics: str, teacher: str, student: str, out: str) -> dict[str, Any]:
    """Record the next generation's teacher: the student if it beats the teacher on val, else the teacher."""
    m = artifacts.read_json(metrics)
    promoted, reason = promotion.decide(m, params.promote)
    chosen = student if promoted else teacher
    sha = artifacts.content_hash(chosen)
    if sha != m[record_role := ("student" if promoted else "teacher")]["checkpoint_sha256"]:
        raise artifacts.ArtifactError(f"'{chosen}' changed since '{metrics}' was computed: rerun evaluate")
    record = {
        "promoted": record_role,
        "checkpoint": chosen,
        "sha256": sha,
        "reason": reason,
        "metric": params.promote.metric,
        "teacher": m["teacher"][params.promote.metric],
        "student": m["student"][params.promote.metric],
    }
    artifacts.write_json(out, record)
    log.info("promote: %s", reason)
    return record


STAGES = {
    "prepare": prepare,
    "train-teacher": train_teacher,
    "infer": infer,
    "filter-balance": filter_balance,
    "train-student": train_student,
    "evaluate": evaluate,
    "promote": promote,
}
