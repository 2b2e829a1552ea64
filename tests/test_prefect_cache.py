"""Cross-run caching of the flow's stages: unchanged inputs are not recomputed, in a new process or a new
flow run, and a param change reruns the stages DVC would rerun for it, no more."""
import json

import pytest
import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId
from prefect.client.schemas.sorting import FlowRunSort, TaskRunSort
from prefect.testing.utilities import prefect_test_harness

from conftest import ROOT, run, write_tiny_params
from flows.self_training import self_training

pytestmark = pytest.mark.slow


def _task_states(flow_run_id) -> dict[str, str]:
    """Task name (gen-qualified inside generation subflows) -> final state name, for a flow run and its subflows."""
    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])), sort=FlowRunSort.ID_DESC, limit=50, offset=0
        )
        names = {flow_run_id: ""} | {f.id: f"{f.name}/" for f in subflows}
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(names))), sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=200, offset=0
        )
    wrappers = {f.parent_task_run_id for f in subflows}  # a subflow call shows as a task run in its parent
    return {f"{names[r.flow_run_id]}{r.name.rsplit('-', 1)[0]}": r.state.name for r in runs if r.id not in wrappers}  # run names: "<task>-<suffix>"


def dvc_stages_reading(section: str) -> set[str]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name for name, s in stages.items() if any(p.split(".")[0] == section for p in s.get("do", s).get("params", []))}


def test_unchanged_stages_are_cached_across_processes_and_runs(tmp_path):
    params = write_tiny_params(tmp_path / "params.yaml")
    raw = yaml.safe_load(params.read_text())
    raw["generations"] = {"gen1": raw["generations"]["gen1"]}
    params.write_text(yaml.safe_dump(raw))
    root = tmp_path / "run"
    # first run: its own process and its own temporary Prefect server
    run(["python", "-m", "flows.self_training", "--params", str(params), "--root", str(root)], ROOT, PREFECT_HOME=str(tmp_path / "prefect"))
    first = json.loads((root / "gen1/metrics.json").read_text())
    with prefect_test_harness(server_startup_timeout=180):  # a different process and server: only the result storage is shared
        state = self_training(str(params), str(root), return_state=True)
        again = _task_states(state.state_details.flow_run_id)
        assert again and {n: s for n, s in again.items() if s != "Cached"} == {}
        state = self_training(str(params), str(root), {"evaluate.batch_size": 64}, return_state=True)
        changed = _task_states(state.state_details.flow_run_id)
    rerun = {name for name, s in changed.items() if s != "Cached"}
    assert rerun == {"gen1/evaluate"} and dvc_stages_reading("evaluate") == {"evaluate"}
    assert json.loads((root / "gen1/metrics.json").read_text())["student"]["test_top1"] == first["student"]["test_top1"]
