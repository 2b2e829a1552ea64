"""End to end on tiny real data: `dvc repro` in a temp git repo with an S3 remote (push, pull, a clone, lineage,
`selftrain reproduce`); then the deployments of prefect.yaml on a real `prefect server` on loopback (SQLite in a
temp dir), run by a real `process` worker (what a user gets from `make server` + `make worker` and the UI's "Run"
button), with the artifacts on S3 and compared byte for byte with the DVC run. One module, so that the flow's
generation is checked against this module's DVC run rather than against a third run of the same stages."""

import base64
import csv
import json
import re
import shutil
import subprocess
from pathlib import Path
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort, TaskRunSort
from safetensors import safe_open

from conftest import BIN, ROOT, S3_BUCKET, S3_SECRET, copy_project, run, tool_env, write_tiny_params
from selftrain import artifacts, methods
from selftrain.cli import main
from selftrain.layout import Generation

pytestmark = pytest.mark.slow
GENS = ["gen1", "gen2"]
ONCE = ["list-data", "prepare", "train-teacher", "make-robustness-sets", "robustness-reference"]
PER_GEN = [
    "infer",
    "filter-balance",
    "train-student",
    "evaluate",
    "promote",
    "record-lineage",
    "report",
]  # train-student: by the generation's method
DEMOS = ["twomoons"]


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([a-z@0-9-]+)'", output)


def up_to_date(status: str) -> bool:
    """`dvc status` reports nothing but list-data, which is always_changed: DVC lists the input data on every repro."""
    return status.split() == ["list-data:", "always", "changed"]


def write_pipeline_params(path: Path) -> Path:
    """The tiny params with two generations: Noisy Student, then reduced MPL over the stored logits (full MPL's
    stage is tested on its own in test_mpl_stages; a third generation would cost this suite a minute)."""
    write_tiny_params(path)
    params = yaml.safe_load(path.read_text())
    params["generations"] = {
        "gen1": params["generations"]["gen1"],
        "gen2": {**params["generations"]["gen3"], "teacher": "gen1"},
    }
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def commit(repo: Path, message: str) -> str:
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", message], repo)
    return run(["git", "rev-parse", "HEAD"], repo).stdout.strip()


@pytest.fixture(scope="module")
def dvc_repo(tmp_path_factory, s3_server) -> tuple[Path, str, dict]:
    """A git + DVC repo with an S3 remote on the loopback server (endpoint and credentials from the AWS environment
    only), after `dvc repro` of two generations, results committed. Tests below run in file order and build on
    each other's commits: results -> gen2 on another model -> a note."""
    repo = tmp_path_factory.mktemp("repo")
    copy_project(repo)
    write_pipeline_params(repo / "params.yaml")
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["dvc", "config", "core.analytics", "false"], repo)
    run(["dvc", "remote", "add", "-d", "storage", f"s3://{S3_BUCKET}/dvc-remote"], repo)
    commit(repo, "init")
    first = run(["dvc", "repro"], repo).stdout
    metrics = {g: json.loads((repo / f"artifacts/{g}/metrics.json").read_text()) for g in GENS}
    commit(repo, "results: two generations")
    return repo, first, metrics


def test_dvc_repro_runs_every_generation_then_nothing(dvc_repo):
    repo, first, metrics = dvc_repo
    stages = ran(first)
    assert sorted(stages) == sorted(ONCE + [f"{s}@{g}" for g in GENS for s in PER_GEN] + DEMOS)
    order = [f"{s}@{g}" for g in GENS for s in PER_GEN if s not in ("record-lineage", "report")]
    assert sorted(order, key=stages.index) == order  # each generation after the one before, stages in DAG order
    assert ran(run(["dvc", "repro"], repo).stdout) == ["list-data"]  # the data's fingerprint, taken every time
    assert up_to_date(run(["dvc", "status"], repo).stdout)
    assert 0 <= metrics["gen2"]["student"]["test_top1"] <= 1 and "test_top5" in metrics["gen1"]["teacher"]
    shown = run(["dvc", "metrics", "show", "--json"], repo).stdout
    assert "test_top1" in shown and "mCE" in shown
    for g in GENS:
        assert metrics[g]["robustness_reference"]["name"] == "gen0"
        for role in ("teacher", "student"):
            assert {"mCE", "relative_mCE", "mFR", "mT5D", "hard_top1"} <= set(metrics[g][role])
    # generation 1's teacher is the reference itself: normalised by itself, its mCE and mFR are 1
    assert metrics["gen1"]["teacher"]["mCE"] == pytest.approx(1.0) and metrics["gen1"]["teacher"][
        "mFR"
    ] == pytest.approx(1.0)
    assert metrics["gen1"]["teacher"]["hard_top1"] == 0.0  # -A holds only images the reference gets wrong
    # each generation's method picked its training stage: gen1 Noisy Student, gen2 reduced MPL (an MLP teacher)
    assert not (repo / "artifacts/gen1/student/mpl_log.csv").exists()
    assert [int(r["step"]) for r in csv.DictReader((repo / "artifacts/gen2/student/mpl_log.csv").open())] == [10, 20]
    assert "mlp.0.weight" in safe_open(repo / "artifacts/gen2/student/mpl_teacher.safetensors", "pt").keys()
    assert not (repo / "artifacts/gen2/student.resume").exists()  # the resume checkpoint goes once the stage is done
    moons = json.loads((repo / "artifacts/twomoons/results.json").read_text())
    assert moons["seeds"] == [0] and 0.5 <= moons["mpl"]["mean"] <= 1
    # each generation's pseudo-label gallery: a picture, and per-class counts that are filter-balance's own
    for g in GENS:
        assert (repo / f"artifacts/{g}/report/gallery.png").read_bytes()[:4] == b"\x89PNG"
        shown = json.loads((repo / f"artifacts/{g}/report/gallery.json").read_text())
        counts = json.loads((repo / f"artifacts/{g}/pseudo/counts.json").read_text())
        for name, c in counts["per_class"].items():
            assert (shown["per_class"][name]["predicted"], shown["per_class"][name]["after_balance"]) == (
                c["predicted"],
                c["after_balance"],
            ), (g, name)
        assert 0 <= shown["kept_correct"] <= 1  # the embedded data set's withheld labels: the confident mistakes panel
    assert "changed_since_previous" not in json.loads(
        (repo / "artifacts/gen1/report/gallery.json").read_text()
    )  # gen0 has no store
    assert json.loads((repo / "artifacts/gen2/report/gallery.json").read_text())["changed_since_previous"] >= 0
    plots = json.loads(run(["dvc", "plots", "show", "--json"], repo).stdout)["data"]
    severity = next(v for k, v in plots.items() if k.startswith("gen1 top-1 error"))
    fields = {row["field"] for row in severity[0]["content"]["data"]["values"]}
    assert fields == {"teacher", "student"}


def test_each_generation_is_taught_by_exactly_the_previous_promoted_checkpoint(dvc_repo):
    repo, _, metrics = dvc_repo
    for prev, g in (("gen0", "gen1"), ("gen1", "gen2")):
        record = json.loads((repo / f"artifacts/{prev}/promoted.json").read_text())
        assert (
            metrics[g]["teacher"]["checkpoint_sha256"]
            == record["sha256"]
            == artifacts.content_hash(str(repo / record["checkpoint"]))
        )
    gen2 = json.loads((repo / "artifacts/gen2/promoted.json").read_text())
    assert [r["generation"] for r in gen2["history"]] == GENS
    table = run(["selftrain", "summary"], repo).stdout
    assert all(f"| {g} |" in table for g in GENS) and "gen2 gate passed" in table


def test_lineage_records_each_generations_inputs_outputs_and_dvc_hashes(dvc_repo, tmp_path):
    repo, _, metrics = dvc_repo
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    code_commit = run(["git", "rev-parse", "HEAD~1"], repo).stdout.strip()  # the pipeline ran on the "init" commit
    for g in GENS:
        rec = json.loads((repo / f"artifacts/{g}/lineage.json").read_text())
        assert rec["outputs"]["student_checkpoint"]["sha256"] == metrics[g]["student"]["checkpoint_sha256"]
        assert rec["teacher"]["sha256"] == metrics[g]["teacher"]["checkpoint_sha256"]
        assert rec["inputs"]["data"]["sha256"] == artifacts.content_hash(str(repo / "artifacts/data"))
        assert rec["inputs"]["pseudo"]["sha256"] == artifacts.content_hash(str(repo / f"artifacts/{g}/pseudo"))
        assert rec["git"] == {"commit": code_commit, "dirty": [], "source": "git"}
        student_out = next(o for o in lock[f"train-student@{g}"]["outs"] if o["path"] == f"artifacts/{g}/student")
        assert rec["dvc_lock"][f"train-student@{g}"]["outs"][f"artifacts/{g}/student"] == student_out["md5"]
        assert rec["params"]["generations"] == {g: yaml.safe_load((repo / "params.yaml").read_text())["generations"][g]}
        assert rec["seeds"]["seed"] == 3 and rec["packages"]["torch"] and rec["machine"]["cpus"] >= 1
    gen1 = json.loads((repo / "artifacts/gen1/lineage.json").read_text())
    assert "train-student@gen2" not in gen1["dvc_lock"] and "prepare" in gen1["dvc_lock"]
    table = run(["selftrain", "lineage", "--png", str(tmp_path / "chain.png")], repo).stdout
    rows = [line.split(" | ")[0].strip("| ") for line in table.splitlines()[2:]]
    assert rows == ["gen2", "gen1", "gen0"]  # back to the supervised teacher and the data
    assert metrics["gen2"]["student"]["checkpoint_sha256"][:12] in table
    assert (tmp_path / "chain.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _dvc_tracked_outputs(repo: Path) -> list[Path]:
    tracked = set(run(["git", "ls-files", "artifacts"], repo).stdout.split())
    return [p for p in (repo / "artifacts").rglob("*") if p.is_file() and str(p.relative_to(repo)) not in tracked]


def test_push_wipe_pull_is_clean_and_a_clone_with_only_the_remote_reproduces_the_metrics(dvc_repo, tmp_path):
    repo, _, _ = dvc_repo
    run(["dvc", "push"], repo)
    shutil.rmtree(repo / ".dvc" / "cache")
    outputs = _dvc_tracked_outputs(repo)
    assert any("gen2/student" in str(p) for p in outputs) and any("gen1/logits" in str(p) for p in outputs)
    for p in outputs:
        p.unlink()
    assert "not in cache" in run(["dvc", "status"], repo).stdout
    run(["dvc", "pull"], repo)
    assert up_to_date(run(["dvc", "status"], repo).stdout)
    # a new laptop or a pod: the git repo and the remote, nothing else
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    assert ran(run(["dvc", "repro", "--pull", "--allow-missing"], clone).stdout) == [
        "list-data"
    ]  # everything else is up to date
    run(["dvc", "pull", "--with-deps", "evaluate@gen1"], clone)
    assert ran(run(["dvc", "repro", "--force", "--single-item", "evaluate@gen1"], clone).stdout) == ["evaluate@gen1"]
    assert json.loads((clone / "artifacts/gen1/metrics.json").read_text()) == json.loads(
        (repo / "artifacts/gen1/metrics.json").read_text()
    )
    for tree in (repo, clone):
        leaked = [p for p in tree.rglob("*") if p.is_file() and S3_SECRET.encode() in p.read_bytes()]
        assert not leaked, leaked


def test_summary_fails_when_a_generation_did_not_finish(dvc_repo, tmp_path, monkeypatch, capsys):
    repo, _, _ = dvc_repo
    for g in ("gen1", "gen2"):  # gen2 promoted, but its report is missing (as when `report@gen2` failed)
        (tmp_path / g / "report").mkdir(parents=True)
        (tmp_path / g / "promoted.json").write_text((repo / f"artifacts/{g}/promoted.json").read_text())
    (tmp_path / "gen1/report/report.md").write_text("")
    monkeypatch.chdir(repo)  # the CLI's code in this process: a subprocess per call costs seconds of imports
    assert main(["summary", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "| gen1 |" in out and "gen2 did not finish" in out
    assert main(["summary", "--root", str(tmp_path), "--until", "gen1"]) == 0  # gen1 was all that was meant to run
    until_gen1 = capsys.readouterr().out
    assert "| gen1 |" in until_gen1 and "did not finish" not in until_gen1


def test_changing_generation_2s_model_reruns_only_what_depends_on_it(dvc_repo):
    repo, _, _ = dvc_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["generations"]["gen2"]["model"] = "resnet14t"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = ran(run(["dvc", "repro"], repo).stdout)
    assert sorted(stages) == sorted(
        ["list-data", *(f"{s}@gen2" for s in ("train-student", "evaluate", "promote", "record-lineage", "report"))]
    )
    assert json.loads((repo / "artifacts/gen2/metrics.json").read_text())["student"]["model"] == "resnet14t"
    commit(repo, "gen2 on resnet14t")


def test_reproduce_a_generation_from_two_commits_ago_matches_bit_for_bit(dvc_repo, tmp_path):
    repo, _, metrics = dvc_repo
    (repo / "NOTES.md").write_text("gen2 moved to resnet14t\n")
    commit(repo, "a note")
    then = run(["git", "rev-parse", "HEAD~2"], repo).stdout.strip()
    model = metrics["gen2"]["student"][
        "checkpoint_sha256"
    ]  # gen2's model (reduced MPL) as the results commit recorded it
    assert (
        json.loads((repo / "artifacts/gen2/lineage.json").read_text())["outputs"]["student_checkpoint"]["sha256"]
        != model
    )
    # the venv's own script, the venv not on PATH (as `.venv/bin/selftrain reproduce` is run): DVC and the stages'
    # `selftrain` must come from that environment all the same
    bare = {**tool_env(), "PATH": "/usr/local/bin:/usr/bin:/bin"}
    proc = subprocess.run(
        [str(BIN / "selftrain"), "reproduce", model[:12], "--workdir", str(tmp_path / "rebuild")],
        cwd=repo,
        env=bare,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert f"reproduce gen2 of commit {then[:10]}" in out and "MATCH: the generation was rebuilt exactly" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| what")]
    assert len(rows) >= 7 and all(line.endswith("| yes |") for line in rows), out
    assert artifacts.content_hash(str(tmp_path / "rebuild/artifacts/gen2/student/model.safetensors")) == model
    assert json.loads((tmp_path / "rebuild/artifacts/gen2/metrics.json").read_text()) == metrics["gen2"]
    missing = subprocess.run(
        ["selftrain", "reproduce", "gen9", "--rev", "HEAD~2"], cwd=repo, env=tool_env(), capture_output=True, text=True
    )
    assert missing.returncode == 2 and "has no artifacts/gen9/lineage.json" in missing.stderr


def test_promoted_models_are_tagged_and_the_current_teacher_is_fetched_by_name(dvc_repo, tmp_path):
    repo, _, _ = dvc_repo
    tagger = {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # an annotated tag needs one, CI may have none
    made = run(["selftrain", "tag"], repo, **tagger).stdout
    assert [line.split(":")[0] for line in made.splitlines()] == ["teacher@v0.0.0", "teacher@v1.0.0", "teacher@v2.0.0"]
    message = run(["git", "tag", "--list", "--format=%(contents)", "teacher@v2.0.0"], repo).stdout
    gen2 = json.loads((repo / "artifacts/gen2/promoted.json").read_text())
    assert message.startswith("gen2 (reduced_mpl, resnet14t) promoted: test top-1")
    assert json.loads(next(line for line in message.splitlines() if line.startswith("{")))["sha256"] == gen2["sha256"]
    assert (
        run(["git", "rev-list", "-n1", "teacher@v2.0.0"], repo).stdout.strip()
        == run(["git", "rev-parse", "HEAD~1"], repo).stdout.strip()
    )
    assert run(["selftrain", "tag"], repo, **tagger).stdout.strip() == "no new promotion to tag"
    current = run(["selftrain", "teacher"], repo).stdout
    assert current.startswith("teacher@v2.0.0: gen2 (reduced_mpl, resnet14t)")
    get = current.splitlines()[-1].split()
    assert get[:2] == ["dvc", "get"] and get[3] == "artifacts/gen2/student/model.safetensors"
    run([*get, "-o", str(tmp_path / "teacher.safetensors")], repo)  # what a user runs: the teacher by its tag
    assert artifacts.content_hash(str(tmp_path / "teacher.safetensors")) == gen2["sha256"]


def test_a_failed_gate_stops_the_chain_and_says_why(dvc_repo):
    repo, _, _ = dvc_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    # clean accuracy may do anything; mCE must fall by 1.0 (100 points), which no student can
    params["promote"]["rules"] = [{"metric": "val_top1", "min_gain": -1.0}, {"metric": "mCE", "min_gain": 1.0}]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run(["dvc", "repro", "--keep-going"], cwd=repo, env=tool_env(), capture_output=True, text=True)
    assert proc.returncode != 0
    assert (
        "gen1 did not promote its student (failed rule(s) mCE: keeping the teacher" in proc.stderr
        and "stops after gen1" in proc.stderr
    )
    assert "report@gen1" in ran(proc.stdout) and not any(
        s.endswith("@gen2") and s != "infer@gen2" for s in ran(proc.stdout)
    )
    assert "gen1 gate **failed: the chain stops here**" in (repo / "artifacts/gen1/report/report.md").read_text()
    record = json.loads((repo / "artifacts/gen1/promoted.json").read_text())
    assert not record["passed"] and record["promoted"] == "teacher"
    assert [(r["metric"], r["passed"]) for r in record["rules"]] == [("val_top1", True), ("mCE", False)]
    mce = record["rules"][1]
    assert mce["gain"] == pytest.approx(mce["teacher"] - mce["student"]) and mce["min_gain"] == 1.0
    assert record["sha256"] == json.loads((repo / "artifacts/gen0/promoted.json").read_text())["sha256"]
    assert "gen1 gate **failed: the chain stops here**" in run(["selftrain", "summary"], repo).stdout  # exit 0


def test_deploy_registers_the_nightly_schedule_pools_and_typed_parameters(deployed):
    spec = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("self-training/nightly")
        on_demand = client.read_deployment_by_name("self-training/on-demand")
        k8s = client.read_deployment_by_name("self-training/kubernetes")
        pool = client.read_work_pool("kubernetes")
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in nightly.schedules] == [("0 2 * * *", "UTC", True)]
    assert nightly.parameters == spec["nightly"]["parameters"] == {"params_path": "params.yaml", "root": "runs/nightly"}
    assert (nightly.work_pool_name, on_demand.work_pool_name, k8s.work_pool_name) == (
        "process",
        "process",
        "kubernetes",
    )
    assert on_demand.schedules == [] and k8s.job_variables == {"image": "selftrain:latest"}
    assert pool.base_job_template == json.loads((ROOT / "k8s/base-job-template.json").read_text())
    schema = on_demand.parameter_openapi_schema["properties"]
    assert schema["method"]["anyOf"][0]["enum"] == list(methods.names())  # the registry's methods
    assert schema["generations"]["anyOf"][0] == {"type": "integer", "exclusiveMinimum": 0}
    # the server checks a run's parameters against that schema before anything runs
    bad = subprocess.run(
        ["prefect", "deployment", "run", "self-training/on-demand", "--param", "method=noisy"],
        cwd=ROOT,
        env=tool_env(**deployed),
        capture_output=True,
        text=True,
    )
    assert "Validation failed for field 'method'" in bad.stdout + bad.stderr


def _run_deployment(env: dict[str, str], params: dict) -> tuple[UUID, str]:
    """`prefect deployment run`, then a `process` worker that takes that run and exits: the flow run's id, and what
    both commands printed (the worker's output holds the flow run's)."""
    out = run(["prefect", "deployment", "run", "self-training/on-demand", "--params", json.dumps(params)], ROOT, **env)
    flow_run_id = UUID(next(line.split("UUID:")[1].strip() for line in out.stdout.splitlines() if "UUID:" in line))
    worker = run(["prefect", "worker", "start", "--pool", "process", "--run-once"], ROOT, **env)
    return flow_run_id, out.stdout + out.stderr + worker.stdout + worker.stderr


def _states(flow_run_id: UUID) -> tuple[str, dict[str, str], list[str]]:
    """The flow run's state, its stages' states ("<subflow run name>/<task>"), and its subflow run names."""
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state.name
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])),
            sort=FlowRunSort.ID_DESC,
        )
        names = {flow_run_id: ""} | {f.id: f"{f.name}/" for f in subflows}
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(names))),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
        )
    wrappers = {f.parent_task_run_id for f in subflows}  # a subflow call shows as a task run in its parent
    stages = {
        f"{names[r.flow_run_id]}{r.name.rsplit('-', 1)[0]}": r.state.name for r in runs if r.id not in wrappers
    }  # "<task>-<suffix>"
    return state, stages, sorted(f.name for f in subflows)


def _dvc_stages_reading(section: str) -> set[str]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {
        name for name, s in stages.items() if any(p.split(".")[0] == section for p in s.get("do", s).get("params", []))
    }


def test_deployment_on_s3_runs_on_a_worker_like_the_dvc_run_then_hits_the_cache(
    dvc_repo, deployed, s3_server, tmp_path
):
    """The `on-demand` deployment, run by a `process` worker, with its artifact root and task results on the S3
    endpoint (the `kubernetes` deployment's layout): generation 1 byte for byte as DVC made it, the UI's artifacts,
    and the secret key nowhere in the output, the objects or the server's home. Then the same run again (every stage
    Cached, in a new flow-run process) and with one evaluate param changed (only what DVC reruns for it runs)."""
    import s3fs

    repo, _, dvc_metrics = dvc_repo
    root = f"s3://{S3_BUCKET}/flow-run"
    overrides = {"prefect.result_storage": f"s3://{S3_BUCKET}/flow-results"}
    params = {
        "params_path": str(write_pipeline_params(tmp_path / "params.yaml")),
        "root": root,
        "generations": 1,
        "overrides": overrides,
    }

    first, printed = _run_deployment(deployed, params)
    state, stages, subflows = _states(first)
    assert state == "Completed" and subflows == ["gen1-noisy_student"]
    assert set(stages.values()) == {"Completed"} and {
        "train-teacher",
        "gen1-noisy_student/train-student",
        "gen1-noisy_student/evaluate",
    } <= set(stages)
    data_hash = artifacts.content_hash(str(repo / "artifacts/data"))
    assert artifacts.content_hash(Generation(root, "gen0").data) == data_hash  # the same split, byte for byte
    # same seed, same bytes, whichever runner: the flow's checkpoints are the CLI's, and so are the metrics
    metrics = artifacts.read_json(Generation(root, "gen1").metrics)
    for role in ("teacher", "student"):
        assert metrics[role].keys() == dvc_metrics["gen1"][role].keys(), role
        assert metrics[role]["checkpoint_sha256"] == dvc_metrics["gen1"][role]["checkpoint_sha256"], role
        for key in ("val_top1", "test_top1", "test_top5", "mean_corruption_error", "mCE", "mFR", "hard_top1"):
            assert metrics[role][key] == dvc_metrics["gen1"][role][key], (role, key)
    lineage = artifacts.read_json(Generation(root, "gen1").lineage)
    assert lineage["inputs"]["data"]["sha256"] == data_hash and lineage["dvc_lock"] is None
    assert lineage["outputs"]["student_checkpoint"]["uri"] == f"{root}/gen1/student/model.safetensors"
    # what the UI shows: the flow run's artifacts, each plot in the artifact itself (a data URI), the report's PNG
    with get_client(sync_client=True) as client:
        flow_runs = [
            first,
            *(
                f.id
                for f in client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[first]))
                )
            ),
        ]
        made = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=flow_runs)),
            sort=ArtifactSort.KEY_ASC,
        )
    by_key = {a.key: a for a in made}
    assert {
        "self-training-generations",
        "gen1-results",
        "gen1-balance",
        "gen1-accuracy",
        "gen1-class-counts",
        "gen1-confidence",
    } <= set(by_key)
    results = by_key["gen1-results"].data
    assert (
        f"{100 * metrics['student']['test_top1']:.2f} %" in results and "promoted: **" in results and "mCE" in results
    )
    counts = artifacts.read_json(f"{root}/gen1/pseudo/counts.json")
    assert all(
        f"| {name} | {c['predicted']} |" in by_key["gen1-balance"].data for name, c in counts["per_class"].items()
    )
    for key, png in (("gen1-class-counts", "class_counts.png"), ("gen1-accuracy", "accuracy.png")):
        inline = re.search(r"!\[[^]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", by_key[key].data)
        assert inline and base64.b64decode(inline.group(1)) == artifacts.read_bytes(f"{root}/gen1/report/{png}"), key
    fs = s3fs.S3FileSystem()
    assert fs.find(f"{S3_BUCKET}/flow-results")  # the task results went to S3 too
    secret = S3_SECRET.encode()
    assert secret not in printed.encode()
    assert not [
        k for k in fs.find(f"{S3_BUCKET}/flow-run") + fs.find(f"{S3_BUCKET}/flow-results") if secret in fs.cat(k)
    ]
    assert not [p for p in Path(deployed["PREFECT_HOME"]).rglob("*") if p.is_file() and secret in p.read_bytes()]

    again, _ = _run_deployment(deployed, params)
    state, cached, _ = _states(again)
    # every stage from the cache but list-data, which (like DVC's always_changed stage) fingerprints the data each run
    assert (
        state == "Completed"
        and cached.keys() == stages.keys()
        and cached.pop("list-data") == "Completed"
        and set(cached.values()) == {"Cached"}
    )

    changed, _ = _run_deployment(deployed, {**params, "overrides": {**overrides, "evaluate.batch_size": 64}})
    state, rerun, _ = _states(changed)
    # evaluate, and record-lineage, which records the evaluate params: what DVC reruns for the same change
    assert state == "Completed" and {s for s, v in rerun.items() if v != "Cached"} == {
        "list-data",
        "gen1-noisy_student/evaluate",
        "gen1-noisy_student/record-lineage",
    }
    assert _dvc_stages_reading("evaluate") == {"evaluate", "record-lineage"}
    assert (
        artifacts.read_json(Generation(root, "gen1").metrics)["student"]["test_top1"] == metrics["student"]["test_top1"]
    )


def test_dvc_yaml_paths_are_the_layout_paths():
    g0 = Generation("artifacts", "gen0")
    known = {
        g0.data_listing,
        g0.data,
        g0.teacher,
        g0.promoted,
        g0.robustness_sets,
        g0.robustness_reference,
        g0.twomoons,
        "dvc.lock",
    }
    for name in ["${key}", "${item.teacher}"]:
        g = Generation("artifacts", name)
        known |= {g.logits, g.pseudo, g.student, g.student_checkpoint, g.metrics, g.promoted, g.lineage, g.report}
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ONCE + PER_GEN + DEMOS
    for name, stage in stages.items():
        cmd = stage.get("do", stage)["cmd"]
        uris = set(re.findall(r"--(?!generation)[a-z-]+ (\S+)", cmd))
        assert uris <= known, f"{name}: {uris - known} not in selftrain.layout"
