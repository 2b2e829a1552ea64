"""Stages of a generation, run in-process on tiny real data: clean inference, promotion records, student init, EMA."""

import copy
import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import write_tiny_params
from selftrain import artifacts, logits, models, runtime, stages, train
from selftrain.data import load_split
from selftrain.gate import GateError
from selftrain.inputs import clean_batch
from selftrain.layout import Generation
from selftrain.methods.noisy_student.step import PseudoLabelStep
from selftrain.params import load_params
from selftrain.promoted import resolve
from selftrain.pseudo_labels import dense, select
from selftrain.steps.supervised import SupervisedStep


@pytest.fixture(scope="module")
def gen0(tmp_path_factory):
    """Data and a heavily noised teacher (s4, dropout 0.5, drop-path 0.5): generation 0's record."""
    tmp = tmp_path_factory.mktemp("gen")
    noisy = {"teacher.augment": "s4", "teacher.drop_rate": 0.5, "teacher.drop_path_rate": 0.5, "teacher.epochs": 2}
    params = load_params(write_tiny_params(tmp / "params.yaml"), noisy)
    g = Generation(str(tmp / "run"), "gen0")
    stages.prepare.run(params, out=g.data)
    stages.train_teacher.run(params, data=g.data, out=g.teacher, promoted=g.promoted)
    return params, g


def test_teacher_inference_has_no_noise(gen0, tmp_path):
    params, g = gen0
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    stages.infer.run(params, teacher=g.promoted, data=g.data, out=a)
    stages.infer.run(params, teacher=g.promoted, data=g.data, out=b)
    la, lb = logits.read_store(a), logits.read_store(b)
    assert la.header == lb.header and all(
        np.array_equal(getattr(la, k), getattr(lb, k)) for k in ("ids", "values", "indices")
    )
    # and the stored values are the clean eval-mode forward pass, not a noised one
    net, _ = models.load_checkpoint(resolve(g.promoted)[0])
    unl = load_split(g.data, "unlabeled")
    with torch.no_grad():
        ref = torch.log_softmax(net.eval()(clean_batch(unl.images[:8])), 1).half().numpy()
    np.testing.assert_allclose(la.values[:8].astype(np.float32), ref.astype(np.float32), atol=2e-3)


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_filter_balance_over_a_sharded_top_k_store_gives_the_in_memory_selection(gen0, tmp_path, kind):
    params, g = gen0
    params = params.model_copy(
        update={
            "infer": params.infer.model_copy(update={"topk": 3, "shard_size": 37}),
            "pseudo_labels": params.pseudo_labels.model_copy(
                update={"kind": kind, "threshold": 0.0, "temperature": 0.5, "per_class": 40}
            ),
        }
    )
    store, out = str(tmp_path / "logits"), str(tmp_path / "pseudo")
    stages.infer.run(params, teacher=g.promoted, data=g.data, out=store)
    total = stages.filter_balance.run(params, logits_store=store, data=g.data, out=out)
    got = artifacts.load_shards(out, "pseudo")
    stored = logits.read_store(store)
    assert (
        total["after_balance"] > 50 and len(stored.header["shards"]) > 5 and len(got["rows"]) == total["after_balance"]
    )
    # the stage (float16 tables, shards on threads, writer threads) against select() on the same numbers in memory
    classes = load_split(g.data, "unlabeled").classes
    ref = select(stored.dense_log_probs(), params.pseudo_labels, params.seed, classes)
    assert np.array_equal(got["rows"], ref.rows)
    np.testing.assert_allclose(dense(got["target_indices"], got["target_values"], len(classes)), ref.targets, atol=1e-6)
    assert json.loads(open(f"{out}/counts.json").read()) == ref.stats


def test_a_generation_loads_exactly_the_promoted_checkpoint(gen0, tmp_path):
    params, g = gen0
    record = json.loads(open(g.promoted).read())
    assert record["passed"] and record["sha256"] == artifacts.content_hash(record["checkpoint"])
    assert resolve(g.promoted) == (record["checkpoint"], record)
    # a record whose checkpoint changed afterwards is refused
    other = tmp_path / "other"
    (other).mkdir()
    blob = open(record["checkpoint"], "rb").read()
    (other / "model.safetensors").write_bytes(blob)
    tampered = dict(record, checkpoint=str(other / "model.safetensors"))
    (tmp_path / "p.json").write_text(json.dumps(tampered))
    assert resolve(str(tmp_path / "p.json"))[0] == tampered["checkpoint"]
    (other / "model.safetensors").write_bytes(blob[:-4] + b"\0\0\0\0")
    with pytest.raises(artifacts.ArtifactError, match="changed after promotion"):
        resolve(str(tmp_path / "p.json"))
    # a failed gate stops the chain, saying why
    (tmp_path / "f.json").write_text(
        json.dumps(dict(record, generation="gen4", passed=False, reason="student 0.5 vs teacher 0.6"))
    )
    with pytest.raises(
        GateError, match="gen4 did not promote its student \\(student 0.5 vs teacher 0.6\\).*stops after gen4"
    ):
        resolve(str(tmp_path / "f.json"))


def test_student_initialised_from_the_teacher_starts_from_its_weights(gen0):
    params, g = gen0
    teacher, spec = models.load_checkpoint(resolve(g.promoted)[0])
    student = models.create(spec, drop_rate=0.3)
    assert models.init_from(student, spec, resolve(g.promoted)[0]) == len(teacher.state_dict())
    for k, v in teacher.state_dict().items():
        assert torch.equal(student.state_dict()[k], v), k
    # a checkpoint of another architecture is refused; for another class count only the body is loaded
    bigger = dataclasses.replace(spec, name="resnet14t")
    with pytest.raises(
        ValueError,
        match=r"a resnet10t \(1 channels\): its weights do not fit \(fc.weight: \(10, 2048\) in the model, \(10, "
        r"512\) in the checkpoint\)",
    ):
        models.init_from(models.create(bigger), bigger, resolve(g.promoted)[0])
    # a variant with the same weights (no stem max-pool) starts from them
    small = dataclasses.replace(spec, name="resnet10t_small")
    grown = models.create(small)
    assert models.init_from(grown, small, resolve(g.promoted)[0]) == len(teacher.state_dict())
    assert torch.equal(grown.conv1[0].weight, teacher.conv1[0].weight)
    three = dataclasses.replace(spec, num_classes=3, classes=("a", "b", "c"))
    other = models.create(three)
    head = other.fc.weight.clone()
    models.init_from(other, three, resolve(g.promoted)[0])
    assert torch.equal(other.fc.weight, head) and torch.equal(other.conv1[0].weight, teacher.conv1[0].weight)


def fit(net, p, labeled, *, val=None, pseudo=None):
    """selftrain.train.fit in one CPU process, seed 0: the supervised step, or the pseudo-label one with `pseudo`."""
    ctx = train.Context(runtime.pick_device("cpu"))
    step = (
        SupervisedStep(net, p, labeled, ctx, 0) if pseudo is None else PseudoLabelStep(net, p, labeled, pseudo, ctx, 0)
    )
    return train.fit(
        step, ctx, 0, log_every=step.steps_per_epoch, val=val, val_every=p.val_every, ema_decay=p.ema_decay
    )


def test_ema_student_is_kept_and_differs_from_the_raw_weights(gen0, tmp_path):
    params, g = gen0
    labeled = load_split(g.data, "labeled")
    spec = models.ModelSpec("resnet10t", 10, 1, 28, labeled.classes)
    p = params.student.model_copy(update={"ema_decay": 0.9, "epochs": 2})
    net = models.create(spec)
    kept, rows, _ = fit(net, p, labeled)
    assert kept is not net and len(rows) == 2
    diffs = [not torch.equal(a, b) for a, b in zip(kept.state_dict().values(), net.state_dict().values())]
    assert any(diffs)


def test_validating_less_often_leaves_training_unchanged(gen0):
    params, g = gen0
    labeled, val = load_split(g.data, "labeled"), load_split(g.data, "val")
    spec = models.ModelSpec("resnet10t", 10, 1, 28, labeled.classes)
    runs = {}
    for every in (1, 2):
        p = params.teacher.model_copy(update={"epochs": 5, "val_every": every})
        torch.manual_seed(0)
        kept, rows, _ = fit(models.create(spec), p, labeled, val=val)
        runs[every] = kept, [r["val_top1"] for r in rows]
    (every_epoch, curve), (sparse, sparse_curve) = runs[1], runs[2]
    assert [v is not None for v in sparse_curve] == [False, True, False, True, True]  # epochs 2, 4 and the last
    assert [sparse_curve[i] for i in (1, 3, 4)] == [curve[i] for i in (1, 3, 4)]
    assert all(torch.equal(a, b) for a, b in zip(every_epoch.state_dict().values(), sparse.state_dict().values()))


@pytest.mark.parametrize("loss, labels_matter", [("soft_ce", False), ("ce", True), ("dist", True)])
def test_the_students_loss_decides_whether_labels_are_used(gen0, loss, labels_matter):
    params, g = gen0
    labeled = load_split(g.data, "labeled")
    targets = np.eye(len(labeled.classes), dtype=np.float32)[labeled.labels] * 0.8 + 0.02  # soft pseudo-labels
    p = params.student.model_copy(update={"loss": loss, "loss_tau": 2.0, "epochs": 1})
    spec = models.ModelSpec("resnet10t", 10, 1, 28, labeled.classes)
    init, weights = models.create(spec), []
    for labels in (labeled.labels, np.roll(labeled.labels, 1)):  # the same start and images, other labels
        kept, rows, _ = fit(
            copy.deepcopy(init), p, dataclasses.replace(labeled, labels=labels), pseudo=(labeled.images, targets)
        )
        assert np.isfinite(rows[0]["loss_pseudo"]) and rows[0]["loss_pseudo"] > 0
        weights.append(kept.state_dict())
    same = all(torch.equal(a, b) for a, b in zip(weights[0].values(), weights[1].values()))
    assert same != labels_matter


def test_noisy_student_with_consistency_trains_it_on_exactly_the_images_filter_balance_dropped(
    gen0, tmp_path, monkeypatch
):
    params, g = gen0
    store, pseudo = str(tmp_path / "logits"), str(tmp_path / "pseudo")
    p = params.model_copy(
        update={"pseudo_labels": params.pseudo_labels.model_copy(update={"threshold": 0.12, "per_class": None})}
    )
    stages.infer.run(p, teacher=g.promoted, data=g.data, out=store)
    stages.filter_balance.run(p, logits_store=store, data=g.data, out=pseudo)
    rows, _ = stages.filter_balance.load_pseudo(pseudo, 10)
    unlabeled = load_split(g.data, "unlabeled")
    dropped = np.setdiff1d(np.arange(len(unlabeled)), rows)
    assert 0 < len(dropped) < len(unlabeled)
    built, real_build = [], PseudoLabelStep.build.__func__
    monkeypatch.setattr(
        PseudoLabelStep, "build", classmethod(lambda cls, run: built.append(real_build(cls, run)) or built[-1])
    )
    low_tau = p.methods.fixmatch.model_copy(update={"tau": 0.1})  # a two-epoch teacher's student is nowhere near 0.95
    with_c = p.model_copy(
        update={
            "student": p.student.model_copy(update={"consistency": "dropped", "epochs": 1}),
            "methods": p.methods.model_copy(update={"fixmatch": low_tau}),
        }
    )
    summary = stages.train_student.run(
        with_c, generation="gen1", data=g.data, teacher=g.promoted, pseudo=pseudo, out=str(tmp_path / "c")
    )
    step = built[-1]
    assert np.array_equal(step.views.unlabeled, unlabeled.images[dropped])  # the images it did not keep, each once
    log = list(csv.DictReader((tmp_path / "c/log.csv").open()))
    assert float(log[-1]["loss_consistency"]) > 0 and 0 < float(log[-1]["mask_rate"]) <= 1 and summary["val_top1"] >= 0
    plain = p.model_copy(update={"student": p.student.model_copy(update={"epochs": 1})})
    stages.train_student.run(
        plain, generation="gen1", data=g.data, teacher=g.promoted, pseudo=pseudo, out=str(tmp_path / "plain")
    )
    assert "loss_consistency" not in (tmp_path / "plain/log.csv").read_text().splitlines()[0]
    assert (tmp_path / "plain/model.safetensors").read_bytes() != (tmp_path / "c/model.safetensors").read_bytes()
    # distillation keeps every unlabeled image: 'dropped' has nothing to work on and says so
    distill = with_c.model_copy(update={"student": with_c.student.model_copy(update={"loss": "soft_ce"})})
    distill.generations["gen1"] = distill.generations["gen1"].model_copy(update={"method": "distill"})
    with pytest.raises(ValueError, match="every unlabeled image was kept.*use 'all'"):
        stages.train_student.run(
            distill, generation="gen1", data=g.data, teacher=g.promoted, logits_store=store, out=str(tmp_path / "d")
        )
