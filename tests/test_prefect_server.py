"""The deployments of prefect.yaml against a real `prefect server` on loopback (SQLite in a temp dir), run
by a real `process` worker: what a user gets from `make server` + `make worker` and the UI's "Run" button.

One tiny generation runs three times through the deployment: first for real, then with nothing changed
(every stage Cached, in a new flow-run process), then with one evaluate param changed (only the stages DVC
reruns for it run again)."""

import base64
import json
import re
import socket
import subprocess
import time
import urllib.request
from uuid import UUID

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort, TaskRunSort
from prefect.settings import PREFECT_API_URL, temporary_settings

from conftest import ROOT, run, tool_env, write_tiny_params
from selftrain.methods import METHODS

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A `prefect server start` of its own (own PREFECT_HOME, so its own SQLite database); yields the CLI env."""
    home = tmp_path_factory.mktemp("prefect-home")
    url = f"http://127.0.0.1:{_free_port()}/api"
    env = {"PREFECT_HOME": str(home), "PREFECT_API_URL": url}
    port = url.rsplit(":", 1)[1].split("/")[0]
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", port], env=tool_env(**env), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"prefect server did not start:\n{(home / 'server.log').read_text()[-3000:]}") from None
                time.sleep(0.5)
        with temporary_settings({PREFECT_API_URL: url}):
            yield env
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def deployed(server):
    """The README's set-up: both work pools, then `prefect deploy --all` from the project root."""
    run(["prefect", "work-pool", "create", "process", "--type", "process"], ROOT, **server)
    run(["prefect", "work-pool", "create", "kubernetes", "--type", "kubernetes", "--base-job-template", "k8s/base-job-template.json"], ROOT, **server)
    run(["prefect", "--no-prompt", "deploy", "--all"], ROOT, **server)
    return server


def test_deploy_registers_the_nightly_schedule_pools_and_typed_parameters(deployed):
    spec = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("self-training/nightly")
        on_demand = client.read_deployment_by_name("self-training/on-demand")
        k8s = client.read_deployment_by_name("self-training/kubernetes")
        pool = client.read_work_pool("kubernetes")
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in nightly.schedules] == [("0 2 * * *", "UTC", True)]
    assert nightly.parameters == spec["nightly"]["parameters"] == {"params_path": "params.yaml", "root": "runs/nightly"}
    assert (nightly.work_pool_name, on_demand.work_pool_name, k8s.work_pool_name) == ("process", "process", "kubernetes")
    assert on_demand.schedules == [] and k8s.job_variables == {"image": "selftrain:latest"}
    assert pool.base_job_template == json.loads((ROOT / "k8s/base-job-template.json").read_text())
    schema = on_demand.parameter_openapi_schema["properties"]
    assert schema["method"]["anyOf"][0]["enum"] == list(METHODS)  # the registry's methods
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


def _run_deployment(env: dict[str, str], params: dict) -> UUID:
    """`prefect deployment run`, then a `process` worker that takes that run and exits; the flow run's id."""
    out = run(["prefect", "deployment", "run", "self-training/on-demand", "--params", json.dumps(params)], ROOT, **env).stdout
    flow_run_id = UUID(next(line.split("UUID:")[1].strip() for line in out.splitlines() if "UUID:" in line))
    run(["prefect", "worker", "start", "--pool", "process", "--run-once"], ROOT, **env)
    return flow_run_id


def _states(flow_run_id: UUID) -> tuple[str, dict[str, str], list[str]]:
    """The flow run's state, its stages' states ("<subflow run name>/<task>"), and its subflow run names."""
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state.name
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])), sort=FlowRunSort.ID_DESC
        )
        names = {flow_run_id: ""} | {f.id: f"{f.name}/" for f in subflows}
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(names))), sort=TaskRunSort.EXPECTED_START_TIME_ASC)
    wrappers = {f.parent_task_run_id for f in subflows}  # a subflow call shows as a task run in its parent
    stages = {f"{names[r.flow_run_id]}{r.name.rsplit('-', 1)[0]}": r.state.name for r in runs if r.id not in wrappers}  # "<task>-<suffix>"
    return state, stages, sorted(f.name for f in subflows)


def _dvc_stages_reading(section: str) -> set[str]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name for name, s in stages.items() if any(p.split(".")[0] == section for p in s.get("do", s).get("params", []))}


def test_deployment_runs_on_a_worker_then_hits_the_cache(deployed, tmp_path):
    params = {"params_path": str(write_tiny_params(tmp_path / "params.yaml")), "root": str(tmp_path / "run"), "generations": 1}

    first = _run_deployment(deployed, params)
    state, stages, subflows = _states(first)
    assert state == "Completed" and subflows == ["gen1-noisy_student"]
    assert set(stages.values()) == {"Completed"} and {"train-teacher", "gen1-noisy_student/train-student", "gen1-noisy_student/evaluate"} <= set(stages)
    with get_client(sync_client=True) as client:
        flow_runs = [
            first,
            *(f.id for f in client.read_flow_runs(flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[first])))),
        ]
        made = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=flow_runs)), sort=ArtifactSort.KEY_ASC)
    by_key = {a.key: a for a in made}
    assert {"self-training-generations", "gen1-results", "gen1-balance", "gen1-accuracy", "gen1-class-counts", "gen1-confidence"} <= set(by_key)
    metrics = json.loads((tmp_path / "run/gen1/metrics.json").read_text())
    results = by_key["gen1-results"].data
    assert f"{100 * metrics['student']['test_top1']:.2f} %" in results and "promoted: **" in results and "mCE" in results
    counts = json.loads((tmp_path / "run/gen1/pseudo/counts.json").read_text())
    assert all(f"| {name} | {c['predicted']} |" in by_key["gen1-balance"].data for name, c in counts["per_class"].items())
    # each plot is in the artifact itself (a data URI the UI shows in place), byte for byte the report's PNG
    for key, png in (("gen1-class-counts", "class_counts.png"), ("gen1-accuracy", "accuracy.png")):
        inline = re.search(r"!\[[^]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", by_key[key].data)
        assert inline and base64.b64decode(inline.group(1)) == (tmp_path / "run/gen1/report" / png).read_bytes(), key

    again = _run_deployment(deployed, params)
    state, cached, _ = _states(again)
    assert state == "Completed" and cached.keys() == stages.keys() and set(cached.values()) == {"Cached"}

    changed = _run_deployment(deployed, {**params, "overrides": {"evaluate.batch_size": 64}})
    state, rerun, _ = _states(changed)
    # evaluate, and record-lineage, which records the evaluate params: what DVC reruns for the same change
    assert state == "Completed" and {s for s, v in rerun.items() if v != "Cached"} == {"gen1-noisy_student/evaluate", "gen1-noisy_student/record-lineage"}
    assert _dvc_stages_reading("evaluate") == {"evaluate", "record-lineage"}
    assert json.loads((tmp_path / "run/gen1/metrics.json").read_text())["student"]["test_top1"] == metrics["student"]["test_top1"]
