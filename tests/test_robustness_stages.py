"""The robustness stages on tiny real data: sets, the frozen reference and -A set, evaluate's figures, and the gate
rules."""

import json
import shutil

import numpy as np
import pytest

from conftest import write_tiny_params
from selftrain import artifacts, stages
from selftrain.data import load_split, read_split
from selftrain.gate import decide
from selftrain.layout import Generation
from selftrain.params import load_params, parse_params
from selftrain.robustness import evaluation as robustness
from selftrain.robustness.corruptions import CORRUPTIONS
from selftrain.robustness.perturbations import PERTURBATIONS


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Data, a generation-0 teacher, the robustness sets and the reference built from that teacher."""
    tmp = tmp_path_factory.mktemp("rob")
    # flip + crop: 2 epochs of AutoAugment (the default) can leave a teacher that predicts one class, a reference whose
    # error does not grow under any corruption, and relative mCE is then undefined
    params = load_params(write_tiny_params(tmp / "params.yaml"), {"teacher.epochs": 2, "teacher.augment": "s1"})
    g = Generation(str(tmp / "run"), "gen0")
    stages.prepare.run(params, out=g.data)
    stages.train_teacher.run(params, data=g.data, out=g.teacher, promoted=g.promoted)
    stages.make_robustness_sets.run(params, data=g.data, out=g.robustness_sets)
    stages.robustness_reference.run(
        params, data=g.data, sets=g.robustness_sets, reference_model=g.promoted, out=g.robustness_reference
    )
    return params, g, tmp


def test_sets_are_deterministic_and_shaped_from_the_test_split(run, tmp_path):
    params, g, _ = run
    c, p = robustness.load_sets(g.robustness_sets)
    test = load_split(g.data, "test")
    assert c["clean"].shape == (40, 28, 28, 1) and np.array_equal(c["clean"], test.images[c["rows"]])
    assert np.array_equal(c["labels"], test.labels[c["rows"]])
    assert all(c[name].shape == (5, 40, 28, 28, 1) and c[name].dtype == np.uint8 for name in CORRUPTIONS)
    assert all(p[name].shape == (8, 10, 28, 28, 1) for name in PERTURBATIONS)
    again = str(tmp_path / "sets")
    stages.make_robustness_sets.run(params, data=g.data, out=again)
    assert artifacts.content_hash(again) == artifacts.content_hash(g.robustness_sets), (
        "same seed must give byte-identical sets"
    )


def test_reference_freezes_an_a_set_of_its_own_mistakes(run):
    params, g, _ = run
    ref = artifacts.read_json(artifacts.join(g.robustness_reference, "reference.json"))
    hard = read_split(artifacts.join(g.robustness_reference, "hard.npz"))
    pool = load_split(g.data, "holdout")
    assert ref["name"] == "gen0" and ref["hard_set"]["pool"] == len(pool) == 300
    assert len(hard) == min(30, ref["hard_set"]["reference_wrong"]) > 0
    assert set(hard.ids) <= set(pool.ids)
    assert ref["raw"]["hard_top1"] == 0.0
    assert set(ref["raw"]["corruption_errors"]) == set(CORRUPTIONS) and set(ref["raw"]["flip_probability"]) == set(
        PERTURBATIONS
    )


def test_evaluate_normalises_by_the_reference_and_names_it(run, tmp_path):
    params, g, _ = run
    teacher_ckpt = artifacts.join(g.teacher, stages.CHECKPOINT)
    out = str(tmp_path / "metrics.json")
    # the reference judged against itself: every normalised figure is exactly 1, every difference 0
    stages.evaluate.run(
        params,
        teacher=g.promoted,
        student=teacher_ckpt,
        data=g.data,
        out=out,
        sets=g.robustness_sets,
        reference=g.robustness_reference,
    )
    m = json.loads(open(out).read())
    assert m["robustness_reference"]["name"] == "gen0" and m["robustness_reference"]["checkpoint"] == teacher_ckpt
    for role in ("teacher", "student"):
        assert m[role]["mCE"] == pytest.approx(1.0) and m[role]["relative_mCE"] == pytest.approx(1.0)
        assert m[role]["mFR"] == pytest.approx(1.0) and m[role]["hard_top1"] == 0.0
        assert set(m[role]["robustness"]["raw"]["corruption_errors"]) == set(CORRUPTIONS)
        assert all(len(v) == 5 for v in m[role]["robustness"]["raw"]["corruption_errors"].values())
    assert all(v == 0 for v in m["student_minus_teacher"].values())


def test_evaluate_refuses_a_reference_measured_on_other_sets(run, tmp_path):
    params, g, tmp = run
    other = str(tmp_path / "sets")
    stages.make_robustness_sets.run(params.model_copy(update={"seed": params.seed + 1}), data=g.data, out=other)
    with pytest.raises(artifacts.ArtifactError, match="other robustness sets"):
        stages.evaluate.run(
            params,
            teacher=g.promoted,
            student=artifacts.join(g.teacher, stages.CHECKPOINT),
            data=g.data,
            out=str(tmp_path / "m.json"),
            sets=other,
            reference=g.robustness_reference,
        )
    with pytest.raises(ValueError, match="give both --sets"):
        stages.evaluate.run(
            params,
            teacher=g.promoted,
            student=artifacts.join(g.teacher, stages.CHECKPOINT),
            data=g.data,
            out=str(tmp_path / "m.json"),
            sets=other,
        )
    assert not (tmp_path / "m.json").exists()


def test_no_holdout_means_no_a_set_but_the_rest_works(run, tmp_path):
    params, g, _ = run
    data = str(tmp_path / "data")
    shutil.copytree(g.data, data)
    (tmp_path / "data" / "holdout.npz").unlink()
    (tmp_path / "data" / "MANIFEST.json").write_text(
        json.dumps(
            {
                "files": {
                    k: v
                    for k, v in json.loads((tmp_path / "data" / "MANIFEST.json").read_text())["files"].items()
                    if k != "holdout.npz"
                }
            }
        )
    )
    out = str(tmp_path / "ref")
    stages.robustness_reference.run(params, data=data, sets=g.robustness_sets, reference_model=g.promoted, out=out)
    ref = artifacts.read_json(artifacts.join(out, "reference.json"))
    assert ref["hard_set"] is None and "hard_top1" not in ref["raw"] and ref["raw"]["corruption_errors"]


def _metrics(**pairs):
    return {"teacher": {k: t for k, (t, _) in pairs.items()}, "student": {k: s for k, (_, s) in pairs.items()}}


def test_gate_rules_use_each_metrics_direction_and_name_the_failure():
    p = parse_params(
        {
            "promote": {
                "rules": [
                    {"metric": "val_top1", "min_gain": 0.0},
                    {"metric": "mCE", "min_gain": 0.02},
                    {"metric": "mFR", "min_gain": 0.0},
                ]
            }
        }
    ).promote
    ok, reason, rules = decide(_metrics(val_top1=(0.80, 0.81), mCE=(1.00, 0.95), mFR=(1.0, 0.9)), p)
    assert ok and reason.startswith("all 3 rule(s) passed")
    assert [r["gain"] for r in rules] == pytest.approx([0.01, 0.05, 0.1])  # mCE and mFR: lower is better
    ok, reason, rules = decide(_metrics(val_top1=(0.80, 0.80), mCE=(1.00, 0.99), mFR=(1.0, 1.2)), p)
    assert not ok and reason.startswith("failed rule(s) mCE, mFR: keeping the teacher")
    assert [r["passed"] for r in rules] == [True, False, False]  # a tie on val does not drop: passes
    with pytest.raises(ValueError, match="names 'hard_top1'.*run evaluate with --sets"):
        decide(_metrics(val_top1=(0.8, 0.9)), parse_params({"promote": {"rules": [{"metric": "hard_top1"}]}}).promote)
