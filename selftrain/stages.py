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
from selftrain.data import Split, has_split, load_split, read_split, save_split
from selftrain.data.splits import make_splits
from selftrain.evaluate import accuracy
from selftrain.inference import iter_logits, predict_logits
from selftrain.params import GATE_METRICS, Params, TrainParams
from selftrain.robustness import evaluation as robustness
from selftrain.robustness.hard_set import select_hard

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


def make_robustness_sets(params: Params, *, data: str, out: str) -> dict[str, Any]:
    """Build the -C set (test images under 15 corruptions x 5 severities) and the -P sequences from the test
    split, deterministic by seed; writes corruptions.npz, perturbations.npz and grid.png (one image under each)."""
    test = load_split(data, "test")
    corrupted = robustness.build_corruptions(test, params.robustness, params.seed)
    sequences = robustness.build_perturbations(test, params.robustness, params.seed)
    summary = {
        "corruption_images": len(corrupted["rows"]),
        "perturbation_images": len(sequences["rows"]),
        "frames": params.robustness.frames,
        "corruptions": [k for k in corrupted if k not in ("rows", "labels", "clean")],
        "perturbations": [k for k in sequences if k not in ("rows", "labels")],
    }
    grid = reporting.corruption_grid(corrupted["clean"], {k: corrupted[k] for k in summary["corruptions"]})
    with artifacts.atomic_dir(out) as staging:
        artifacts.save_arrays(artifacts.join(staging, "corruptions.npz"), **corrupted)
        artifacts.save_arrays(artifacts.join(staging, "perturbations.npz"), **sequences)
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


def evaluate(
    params: Params, *, teacher: str, student: str, data: str, out: str, sets: str | None = None, reference: str | None = None
) -> dict[str, Any]:
    """Clean top-1 (and top-5) of teacher and student on val and test, and with --sets and --reference their
    -C/-P/-A robustness (mCE, relative mCE, mFR, mT5D, -A top-1, per corruption x severity); writes metrics.json."""
    if (sets is None) != (reference is None):
        raise ValueError("evaluate: give both --sets (make-robustness-sets) and --reference (robustness-reference), or neither")
    device = runtime.pick_device(params.runtime.device)
    val, test = load_split(data, "val"), load_split(data, "test")
    ref = hard = None
    if sets is not None:
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
            "model": spec.name, "val_top1": v["top1"], **{f"test_{k}": x for k, x in t.items()}, "checkpoint": uri,
            "checkpoint_sha256": artifacts.content_hash(uri),
        }
        if ref is not None:
            raw = robustness.measure(net, corrupted, sequences, hard, params.evaluate.batch_size, device, desc=role)
            summary = robustness.summarize(raw, ref["raw"])
            metrics[role].update(summary.pop("headline"))
            metrics[role]["robustness"] = summary
    metrics["student_minus_teacher"] = {
        k: metrics["student"][k] - metrics["teacher"][k] for k in ("test_top1", *GATE_METRICS) if k in metrics["teacher"]
    }
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


def report(params: Params, *, promoted: str, pseudo: str, metrics: str, out: str) -> dict[str, Any]:
    """Tables and plots of the chain so far: accuracy per generation, pseudo-label confidence, per-class counts,
    and this generation's error vs corruption severity, teacher vs student."""
    rec = promotion.read_record(promoted)
    counts = artifacts.read_json(artifacts.join(pseudo, "counts.json"))
    with artifacts.atomic_dir(out) as staging:
        files = reporting.write_report(staging, rec, counts, artifacts.read_json(metrics))
    return {"generation": rec["generation"], "files": files, "table": reporting.history_table(rec)}


STAGES = {
    "prepare": prepare,
    "train-teacher": train_teacher,
    "infer": infer,
    "filter-balance": filter_balance,
    "train-student": train_student,
    "make-robustness-sets": make_robustness_sets,
    "robustness-reference": robustness_reference,
    "evaluate": evaluate,
    "promote": promote,
    "report": report,
}
