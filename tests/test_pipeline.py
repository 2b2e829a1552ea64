"""End to end on tiny real data: `dvc repro` in a temp git repo, and the Prefect flow with no server."""
import json
import re
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, copy_project, run, write_tiny_params
from selftrain.layout import Generation

pytestmark = pytest.mark.slow
STAGES = ["prepare", "train-teacher", "infer", "filter-balance", "train-student", "evaluate", "promote"]


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([a-z-]+)'", output)


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory) -> tuple[Path, str, dict]:
    repo = tmp_path_factory.mktemp("repo")
    copy_project(repo)
    write_tiny_params(repo / "params.yaml")
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.analytics", "false"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo)
    first = run(["dvc", "repro"], repo).stdout
    metrics = json.loads((repo / "artifacts/gen1/metrics.json").read_text())
    return repo, first, metrics


def test_dvc_repro_runs_every_stage_then_nothing(dvc_repo):
    repo, first, metrics = dvc_repo
    assert ran(first) == STAGES
    assert ran(run(["dvc", "repro"], repo).stdout) == []
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo).stdout
    assert 0 <= metrics["student"]["test_top1"] <= 1 and "test_top5" in metrics["teacher"]
    promoted = json.loads((repo / "artifacts/gen1/promoted.json").read_text())
    assert promoted["sha256"] == metrics[promoted["promoted"]]["checkpoint_sha256"]
    shown = run(["dvc", "metrics", "show", "--json"], repo).stdout
    assert "test_top1" in shown


def test_changing_a_student_param_reruns_only_downstream(dvc_repo):
    repo, _, _ = dvc_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["student"]["epochs"] = 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro"], repo).stdout
    assert ran(out) == ["train-student", "evaluate", "promote"]
    log = (repo / "artifacts/gen1/student/log.csv").read_text().splitlines()
    assert len(log) == 3  # header + 2 epochs


def test_flow_without_server_matches_dvc_run(dvc_repo, tmp_path):
    repo, _, dvc_metrics = dvc_repo
    params = write_tiny_params(tmp_path / "params.yaml")  # the params the DVC run started with
    out = run(["python", "-m", "flows.self_training", "--params", str(params), "--root", str(tmp_path / "run")],
              ROOT, PREFECT_HOME=str(tmp_path / "prefect"))
    assert "| test top-1 |" in out.stdout
    flow_metrics = json.loads((tmp_path / "run/gen1/metrics.json").read_text())
    # Checkpoints are not always bitwise equal when stages run inside Prefect's process (seen for teacher
    # and student, about one run in three; the stage itself is bitwise repeatable from the CLI): the
    # accuracies must agree.
    for role in ("teacher", "student"):
        for key in ("val_top1", "test_top1", "test_top5"):
            assert flow_metrics[role][key] == pytest.approx(dvc_metrics[role][key], abs=0.03), (role, key)


def test_dvc_yaml_paths_are_the_layout_paths():
    g = Generation("artifacts", 1)
    known = {g.data, g.teacher, g.teacher_checkpoint, g.logits, g.pseudo, g.student, g.student_checkpoint, g.metrics, g.promoted}
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == STAGES
    for name, stage in stages.items():
        uris = set(re.findall(r"--[a-z-]+ (\S+)", stage["cmd"]))
        assert uris <= known, f"{name}: {uris - known} not in selftrain.layout"
