"""End to end on tiny real data: `dvc repro` in a temp git repo, and the Prefect flow with no server."""
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from conftest import ROOT, copy_project, run, tool_env, write_tiny_params
from selftrain import artifacts
from selftrain.layout import Generation

pytestmark = pytest.mark.slow
GENS = ["gen1", "gen2", "gen3"]
ONCE = ["prepare", "train-teacher", "make-robustness-sets", "robustness-reference"]
PER_GEN = ["infer", "filter-balance", "train-student", "evaluate", "promote", "report"]  # train-student: by the generation's method
DEMOS = ["twomoons"]


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([a-z@0-9-]+)'", output)


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
    metrics = {g: json.loads((repo / f"artifacts/{g}/metrics.json").read_text()) for g in GENS}
    return repo, first, metrics


def test_dvc_repro_runs_every_generation_then_nothing(dvc_repo):
    repo, first, metrics = dvc_repo
    stages = ran(first)
    assert sorted(stages) == sorted(ONCE + [f"{s}@{g}" for g in GENS for s in PER_GEN] + DEMOS)
    order = [f"{s}@{g}" for g in GENS for s in PER_GEN if s != "report"]
    assert sorted(order, key=stages.index) == order  # each generation after the one before, stages in DAG order
    assert ran(run(["dvc", "repro"], repo).stdout) == []
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo).stdout
    assert 0 <= metrics["gen3"]["student"]["test_top1"] <= 1 and "test_top5" in metrics["gen1"]["teacher"]
    shown = run(["dvc", "metrics", "show", "--json"], repo).stdout
    assert "test_top1" in shown and "mCE" in shown
    for g in GENS:
        assert metrics[g]["robustness_reference"]["name"] == "gen0"
        for role in ("teacher", "student"):
            assert {"mCE", "relative_mCE", "mFR", "mT5D", "hard_top1"} <= set(metrics[g][role])
    # generation 1's teacher is the reference itself: normalised by itself, its mCE and mFR are 1
    assert metrics["gen1"]["teacher"]["mCE"] == pytest.approx(1.0) and metrics["gen1"]["teacher"]["mFR"] == pytest.approx(1.0)
    assert metrics["gen1"]["teacher"]["hard_top1"] == 0.0  # -A holds only images the reference gets wrong
    # each generation's method picked its training stage: gen2 MPL (an image teacher), gen3 reduced MPL (an MLP teacher)
    assert not (repo / "artifacts/gen1/student/mpl_log.csv").exists()
    for g, teacher_key in (("gen2", "conv1.0.weight"), ("gen3", "mlp.0.weight")):
        assert [int(r.split(",")[0]) for r in (repo / f"artifacts/{g}/student/mpl_log.csv").read_text().splitlines()[1:]] == [10, 20]
        assert teacher_key in safe_open(repo / f"artifacts/{g}/student/mpl_teacher.safetensors", "pt").keys()
    assert not (repo / "artifacts/gen2/student.resume").exists()  # the resume checkpoint goes once the stage is done
    moons = json.loads((repo / "artifacts/twomoons/results.json").read_text())
    assert moons["seeds"] == [0] and 0.5 <= moons["mpl"]["mean"] <= 1
    plots = json.loads(run(["dvc", "plots", "show", "--json"], repo).stdout)["data"]
    severity = next(v for k, v in plots.items() if k.startswith("gen1 top-1 error"))
    fields = {row["field"] for row in severity[0]["content"]["data"]["values"]}
    assert fields == {"teacher", "student"}


def test_each_generation_is_taught_by_exactly_the_previous_promoted_checkpoint(dvc_repo):
    repo, _, metrics = dvc_repo
    for prev, g in (("gen0", "gen1"), ("gen1", "gen2"), ("gen2", "gen3")):
        record = json.loads((repo / f"artifacts/{prev}/promoted.json").read_text())
        assert metrics[g]["teacher"]["checkpoint_sha256"] == record["sha256"] == artifacts.content_hash(str(repo / record["checkpoint"]))
    gen3 = json.loads((repo / "artifacts/gen3/promoted.json").read_text())
    assert [r["generation"] for r in gen3["history"]] == GENS
    table = run(["selftrain", "summary"], repo).stdout
    assert all(f"| {g} |" in table for g in GENS) and "gen3 gate passed" in table


def test_summary_fails_when_a_generation_did_not_finish(dvc_repo, tmp_path):
    repo, _, _ = dvc_repo
    for g in ("gen1", "gen2"):  # gen2 promoted, but its report is missing (as when `report@gen2` failed)
        (tmp_path / g / "report").mkdir(parents=True)
        (tmp_path / g / "promoted.json").write_text((repo / f"artifacts/{g}/promoted.json").read_text())
    (tmp_path / "gen1/report/report.md").write_text("")
    proc = subprocess.run(["selftrain", "summary", "--root", str(tmp_path)], cwd=repo, env=tool_env(), capture_output=True, text=True)
    assert proc.returncode == 1
    assert "| gen1 |" in proc.stdout and "gen2 did not finish" in proc.stdout
    until_gen1 = run(["selftrain", "summary", "--root", str(tmp_path), "--until", "gen1"], repo).stdout  # exit 0: gen1 was all
    assert "| gen1 |" in until_gen1 and "did not finish" not in until_gen1


def test_changing_generation_2s_model_reruns_only_generation_2_onwards(dvc_repo):
    repo, _, _ = dvc_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["generations"]["gen2"]["model"] = params["generations"]["gen3"]["model"] = "resnet14t"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = ran(run(["dvc", "repro"], repo).stdout)
    assert sorted(stages) == sorted(["train-student@gen2", "evaluate@gen2", "promote@gen2", "report@gen2"] + [f"{s}@gen3" for s in PER_GEN])
    assert json.loads((repo / "artifacts/gen3/metrics.json").read_text())["teacher"]["model"] == "resnet14t"


def test_a_failed_gate_stops_the_chain_and_says_why(dvc_repo):
    repo, _, _ = dvc_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # clean accuracy may do anything; mCE must fall by 1.0 (100 points), which no student can
    params["promote"]["rules"] = [{"metric": "val_top1", "min_gain": -1.0}, {"metric": "mCE", "min_gain": 1.0}]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run(["dvc", "repro", "--keep-going"], cwd=repo, env=tool_env(), capture_output=True, text=True)
    assert proc.returncode != 0
    assert "gen1 did not promote its student (failed rule(s) mCE: keeping the teacher" in proc.stderr and "stops after gen1" in proc.stderr
    assert "report@gen1" in ran(proc.stdout) and not any(s.endswith("@gen2") and s != "infer@gen2" for s in ran(proc.stdout))
    assert "gen1 gate **failed: the chain stops here**" in (repo / "artifacts/gen1/report/report.md").read_text()
    record = json.loads((repo / "artifacts/gen1/promoted.json").read_text())
    assert not record["passed"] and record["promoted"] == "teacher"
    assert [(r["metric"], r["passed"]) for r in record["rules"]] == [("val_top1", True), ("mCE", False)]
    mce = record["rules"][1]
    assert mce["gain"] == pytest.approx(mce["teacher"] - mce["student"]) and mce["min_gain"] == 1.0
    assert record["sha256"] == json.loads((repo / "artifacts/gen0/promoted.json").read_text())["sha256"]
    assert "gen1 gate **failed: the chain stops here**" in run(["selftrain", "summary"], repo).stdout  # exit 0


def test_flow_without_server_matches_dvc_run(dvc_repo, tmp_path):
    repo, _, dvc_metrics = dvc_repo
    params = write_tiny_params(tmp_path / "params.yaml")  # the params the DVC run started with
    out = run(["python", "-m", "flows.self_training", "--params", str(params), "--root", str(tmp_path / "run")],
              ROOT, PREFECT_HOME=str(tmp_path / "prefect"))
    assert all(f"| {g} |" in out.stdout for g in GENS)
    assert "mlp.0.weight" in safe_open(tmp_path / "run/gen3/student/mpl_teacher.safetensors", "pt").keys()  # reduced MPL ran
    for g in GENS:
        flow_metrics = json.loads((tmp_path / f"run/{g}/metrics.json").read_text())
        # Checkpoints are not always bitwise equal when stages run inside Prefect's process (seen for teacher
        # and student, about one run in three; the stage itself is bitwise repeatable from the CLI): the
        # accuracies must agree. Differences carry over to later generations, whose teachers already differ,
        # and 20 MPL steps on 60 labeled images amplify them: 6 test images of 200 at gen1, 10 after.
        tol = 0.03 if g == "gen1" else 0.05
        for role in ("teacher", "student"):
            for key in ("val_top1", "test_top1", "test_top5", "mean_corruption_error"):
                assert flow_metrics[role][key] == pytest.approx(dvc_metrics[g][role][key], abs=tol), (g, role, key)


def test_dvc_yaml_paths_are_the_layout_paths():
    g0 = Generation("artifacts", "gen0")
    known = {g0.data, g0.teacher, g0.promoted, g0.robustness_sets, g0.robustness_reference, g0.twomoons}
    for name in ["${key}", "${item.teacher}"]:
        g = Generation("artifacts", name)
        known |= {g.logits, g.pseudo, g.student, g.student_checkpoint, g.metrics, g.promoted, g.report}
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ONCE + PER_GEN + DEMOS
    for name, stage in stages.items():
        cmd = stage.get("do", stage)["cmd"]
        uris = set(re.findall(r"--(?!generation)[a-z-]+ (\S+)", cmd))
        assert uris <= known, f"{name}: {uris - known} not in selftrain.layout"
