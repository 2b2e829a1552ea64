"""The method registry is the one list of methods: every registered method has every runner (CLI, DVC, the flow,
Kubernetes), and the places that used to keep their own lists follow the registry."""

import sys

import pytest
import yaml

from conftest import ROOT
from selftrain import lineage, methods, plan
from selftrain.cli import build_parser
from selftrain.params import parse_params
from selftrain.stages import STAGES
from tasks import cache, kubernetes
from tasks import stages as tasks

METHODS = list(methods.METHODS.values())


def dvc_train_stage() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][methods.DVC_TRAIN_STAGE]["do"]


def test_the_cli_stages_are_the_registrys():
    assert sorted(STAGES) == sorted(methods.stage_names())


@pytest.mark.parametrize("m", METHODS, ids=[m.name for m in METHODS])
def test_every_method_has_every_runner(m, tmp_path):
    params = parse_params(
        {
            "generations": {"gen1": {"model": "resnet10t", "teacher": "gen0", "method": m.name}},
            "kubernetes": {"enabled": True},
            "resources": {"train-student": {"gpu": 1, "memory": "4Gi"}},
        }
    )
    # the CLI (what DVC and a Kubernetes pod run): its stage is a command, and the argv a Job gets parses
    kwargs = {"generation": "gen1", "data": "d", "teacher": "t.json", "out": "o", **{k: k for k in m.stage_inputs}}
    argv = kubernetes.stage_argv(m.stage, "p.yaml", "r.json", kwargs)
    args = build_parser().parse_args(argv)
    assert args.command == m.stage and all(getattr(args, k) == v for k, v in kwargs.items())
    # DVC: train-student@genK runs train-generation, which dispatches on the registry; it tracks the method's params
    stage = dvc_train_stage()
    assert stage["cmd"].split()[1] == "train-generation"
    assert set(m.sections) <= set(stage["params"])
    # its step: a class that builds itself from a StudentRun, whose module dvc.yaml tracks
    cls = methods.step_class(m.name)
    assert callable(cls.build) and callable(cls.finish) and m.step.partition(":")[0].replace(".", "/") + ".py" in stage["deps"]
    # the flow: a task of the method's stage, which on Kubernetes gets train-student's pod unless it has its own
    assert hasattr(tasks.for_params(params, str(tmp_path)), m.stage.replace("-", "_"))
    res = kubernetes.resources_for(params, m.stage)
    assert res is not None and res.memory == "4Gi"
    assert m.stage in methods.training_stages()
    # the cache keys it the way DVC tracks it
    assert cache.dvc_stage(m.stage)[0] == tuple(stage["params"])
    # plan counts its work; lineage records its params sections
    lineage_stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["record-lineage"]["do"]
    assert set(m.sections) <= set(lineage.PARAMS) & set(lineage_stage["params"])
    d = params.data
    trained, _ = m.work(params, d.labeled_per_class * 10, d.unlabeled)
    assert trained > 0 and [w.train_images for w in plan.work(params, classes=10) if w.stage == "train-student@gen1"] == [trained]


def test_train_generation_runs_the_methods_stage(monkeypatch):
    """dvc.yaml's command dispatches through the registry, passing each method only the inputs it consumes."""
    calls = []
    for stage in {m.stage for m in METHODS}:
        fn = STAGES[stage]  # the table looks each function up in its module at every call
        monkeypatch.setattr(sys.modules[fn.__module__], fn.__name__, lambda params, **kw: calls.append(kw) or kw)
    for m in METHODS:
        params = parse_params({"generations": {"gen1": {"model": "resnet10t", "teacher": "gen0", "method": m.name}}})
        STAGES["train-generation"](params, generation="gen1", data="d", teacher="t", logits_store="l", pseudo="p", out="o")
        assert set(calls[-1]) == {"generation", "data", "teacher", "out", *m.stage_inputs}


def test_a_data_parallel_method_may_ask_for_several_gpus():
    for m in METHODS:
        raw = {"resources": {m.stage: {"gpu": 8, "nodes": 2}}}
        if m.data_parallel:
            assert parse_params(raw).resources[m.stage].nodes == 2
        else:
            with pytest.raises(ValueError, match="train on several GPUs"):
                parse_params(raw)
