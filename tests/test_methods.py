"""The method registry is the one list of methods: every registered method has every runner (CLI, DVC, the flow,
Kubernetes), and the places that used to keep their own lists follow the registry."""

import re
import sys

import pytest
import yaml

from conftest import ROOT
from selftrain import lineage, methods, plan
from selftrain.cli import build_parser
from selftrain.params import parse_params
from selftrain.stages import STAGES
from tasks import cache, job_manifests
from tasks import stages as tasks

METHODS = list(methods.registry().values())


def dvc_train_stage() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][methods.DVC_TRAIN_STAGE]["do"]


def tracked(key: str, listed: list[str], sep: str) -> bool:
    """`key` (a params key or a file) is in `listed` itself or under an entry of it (DVC tracks a section or a
    directory whole)."""
    parts = key.split(sep)
    return any(sep.join(parts[:k]) in listed for k in range(1, len(parts) + 1))


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
    argv = job_manifests.stage_argv(m.stage, "p.yaml", "r.json", kwargs)
    args = build_parser().parse_args(argv)
    assert args.command == m.stage and all(getattr(args, k) == v for k, v in kwargs.items())
    # DVC: train-student@genK runs train-generation, which dispatches on the registry; it tracks the method's params
    stage = dvc_train_stage()
    assert stage["cmd"].split()[1] == "train-generation"
    assert all(tracked(s, stage["params"], ".") for s in m.sections)
    # its step: a class that builds itself from a StudentRun, whose module dvc.yaml tracks
    cls = methods.step_class(m.name)
    assert (
        callable(cls.build)
        and callable(cls.finish)
        and tracked(m.step.partition(":")[0].replace(".", "/") + ".py", stage["deps"], "/")
    )
    # the flow: a task of the method's stage, which on Kubernetes gets train-student's pod unless it has its own
    assert hasattr(tasks.for_params(params, str(tmp_path)), m.stage.replace("-", "_"))
    res = job_manifests.resources_for(params, m.stage)
    assert res is not None and res.memory == "4Gi"
    assert m.stage in methods.training_stages()
    # the cache keys it the way DVC tracks it
    assert cache.dvc_stage(m.stage)[0] == tuple(stage["params"])
    # plan counts its work; lineage records its params sections
    lineage_stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["record-lineage"]["do"]
    assert all(tracked(s, list(lineage.PARAMS), ".") and tracked(s, lineage_stage["params"], ".") for s in m.sections)
    d = params.data
    trained, _ = m.work(params, d.labeled_per_class * 10, d.unlabeled)
    assert trained > 0 and [
        w.train_images for w in plan.work(params, classes=10) if w.stage == "train-student@gen1"
    ] == [trained]


def test_train_generation_runs_the_methods_stage(monkeypatch):
    """dvc.yaml's command dispatches through the registry, passing each method only the inputs it consumes."""
    calls = []
    for stage in {m.stage for m in METHODS}:
        fn = STAGES[stage]  # the table looks each function up in its module at every call
        monkeypatch.setattr(sys.modules[fn.__module__], fn.__name__, lambda params, **kw: calls.append(kw) or kw)
    for m in METHODS:
        params = parse_params({"generations": {"gen1": {"model": "resnet10t", "teacher": "gen0", "method": m.name}}})
        STAGES["train-generation"](
            params, generation="gen1", data="d", teacher="t", logits_store="l", pseudo="p", out="o"
        )
        assert set(calls[-1]) == {"generation", "data", "teacher", "out", *m.stage_inputs}


def test_a_data_parallel_method_may_ask_for_several_gpus():
    for m in METHODS:
        raw = {"resources": {m.stage: {"gpu": 8, "nodes": 2}}}
        if m.data_parallel:
            assert parse_params(raw).resources[m.stage].nodes == 2
        else:
            with pytest.raises(ValueError, match="train on several GPUs"):
                parse_params(raw)


TOY_RECORD = '''"""A toy method: the supervised step for `methods.toy.steps` steps."""

from pydantic import Field

from selftrain.methods import Method, MethodParams


class ToyParams(MethodParams):
    steps: int = Field(3, gt=0)


METHOD = Method(
    name="toy",
    stage="train-student",
    consumes="nothing",
    data_parallel=False,
    step="selftrain.methods.toy.step:ToyStep",
    work=lambda params, labeled, unlabeled: (params.methods.toy.steps * params.student.batch_size, 1),
    summary="a toy",
    params=ToyParams,
)
'''
TOY_STEP = """from selftrain.steps.supervised import SupervisedStep


class ToyStep(SupervisedStep):
    @classmethod
    def build(cls, run):
        step = cls(run.student, run.params.student, run.labeled, run.ctx, run.params.seed)
        step.total = run.params.methods.toy.steps
        return step
"""


@pytest.mark.slow
def test_a_new_method_is_its_package_and_its_lines_in_params_yaml(tmp_path):
    """A toy method added to a copy of the project, as a user would add one: its package and params.yaml change,
    nothing else; `dvc repro` trains it, and DVC reruns it when its options (methods.toy) or its code change."""
    from conftest import copy_project, run, write_tiny_params

    repo = tmp_path / "repo"
    copy_project(repo)
    write_tiny_params(repo / "params.yaml")
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo)

    (repo / "selftrain/methods/toy").mkdir()
    (repo / "selftrain/methods/toy/__init__.py").write_text(TOY_RECORD)
    (repo / "selftrain/methods/toy/step.py").write_text(TOY_STEP)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["generations"] = {"gen1": {"model": "resnet10t", "teacher": "gen0", "method": "toy"}}
    params["methods"]["toy"] = {"steps": 3}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = run(["git", "status", "--porcelain", "--untracked-files=normal"], repo).stdout.split("\n")
    assert sorted(line[3:] for line in changed if line) == ["params.yaml", "selftrain/methods/toy/"]

    env = {"PYTHONPATH": str(repo)}  # the copy's selftrain, toy included, not the one installed from this checkout

    def repro() -> tuple[list[str], int]:
        out = run(["dvc", "repro", "train-student@gen1"], repo, **env).stdout
        log = (repo / "artifacts/gen1/student/log.csv").read_text().splitlines()
        return re.findall(r"Running stage '(train-student@gen1)'", out), int(log[-1].split(",")[1])

    assert repro() == (["train-student@gen1"], 3)
    params["methods"]["toy"]["steps"] = 4
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert repro() == (["train-student@gen1"], 4)  # its section is tracked: dvc.yaml tracks `methods`
    step = repo / "selftrain/methods/toy/step.py"
    step.write_text(step.read_text() + "# a change to the method's code\n")
    assert repro() == (["train-student@gen1"], 4)  # its code is tracked: dvc.yaml tracks selftrain/methods
    assert repro()[0] == []
    plan = run([sys.executable, "-m", "selftrain.cli", "plan", "--params", "params.yaml"], repo, **env).stdout
    # `selftrain plan` counts the toy's work by its record: 4 steps of 20 labeled images and one pass over val (100)
    assert "| train-student@gen1 | resnet10t | 180 |" in plan
