"""The stages as Prefect tasks: transient I/O errors are retried, deterministic ones fail at once and say why.

Real stages in real flows on Prefect's test server; the only stand-in is a filesystem whose first two
listings drop the connection, registered with fsspec the way s3fs is.
"""
import logging
import time
import warnings
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from kubernetes.client import ApiException
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.sorting import LogSort, TaskRunSort
from prefect.logging.handlers import APILogHandler
from prefect.testing.utilities import prefect_test_harness
from urllib3.exceptions import ProtocolError

from conftest import write_tiny_params
from flows.logs import stage_logs_to_prefect
from selftrain.data import load_split
from selftrain.params import load_params
from tasks import stages as tasks
from tasks.stages import is_transient


class FlakyFS(LocalFileSystem):
    """Local files behind a connection that resets on the first `failures` listings."""

    protocol = ("flaky",)
    failures = 0
    delay_s = 0.0

    def ls(self, path, detail=False, **kwargs):
        time.sleep(FlakyFS.delay_s)
        if FlakyFS.failures:
            FlakyFS.failures -= 1
            raise ConnectionResetError("connection reset by peer")
        return super().ls(path, detail=detail, **kwargs)


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    fsspec.register_implementation("flaky", FlakyFS, clobber=True)
    with prefect_test_harness(server_startup_timeout=180):
        yield


@flow
def prepare_flow(params_path: str, overrides: dict, out: str) -> dict:
    stage_logs_to_prefect()
    params = load_params(params_path, overrides)
    return tasks.for_params(params, str(Path(out).parent)).prepare(params, out=out)


def _run(params_path, overrides, out):
    state = prepare_flow(str(params_path), overrides, str(out), return_state=True)
    APILogHandler().flush()  # logs reach the API in batches: send the rest before reading them
    with get_client(sync_client=True) as client:
        run_id = state.state_details.flow_run_id
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])), sort=TaskRunSort.EXPECTED_START_TIME_ASC, limit=50
        )
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), sort=LogSort.TIMESTAMP_ASC, limit=200, offset=0)
    return state, task_runs, "\n".join(log.message for log in logs)


def _folder_overrides(tree, protocol="flaky://"):
    return {
        "data.source": "folders", "data.image_size": 16,
        "data.folders": {s: f"{protocol}{tree / s}" for s in ("labeled", "unlabeled", "val", "test")},
        "prefect.retries": 3, "prefect.retry_backoff_s": 0,
    }


def test_transient_io_errors_are_retried_until_the_stage_completes(image_tree, tmp_path):
    FlakyFS.failures = 2
    state, (task_run,), logs = _run(write_tiny_params(tmp_path / "params.yaml"), _folder_overrides(image_tree), tmp_path / "data")
    assert state.is_completed() and task_run.state.is_completed()
    assert "prepare: {'labeled': 6, " in logs  # the stage's own log line reached the run's log
    assert task_run.run_count == 3 and FlakyFS.failures == 0  # two resets, then the run that worked
    assert load_split(str(tmp_path / "data"), "labeled").labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_bad_data_fails_at_once_with_the_reason_in_the_run_logs(image_tree, tmp_path):
    (image_tree / "val" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    FlakyFS.failures = 0
    state, (task_run,), logs = _run(write_tiny_params(tmp_path / "params.yaml"), _folder_overrides(image_tree), tmp_path / "data")
    assert state.is_failed() and task_run.state.is_failed() and task_run.run_count == 1
    assert "cannot read image" in logs and "broken.png" in logs
    assert not (tmp_path / "data").exists()


def test_bad_params_fail_the_flow_at_once_with_the_key_in_the_run_logs(tmp_path):
    state, task_runs, logs = _run(write_tiny_params(tmp_path / "params.yaml"), {"student.epochs": -1}, tmp_path / "data")
    assert state.is_failed() and task_runs == []
    assert "student.epochs" in logs


def test_a_stage_over_its_timeout_fails_without_retries(image_tree, tmp_path):
    FlakyFS.failures, FlakyFS.delay_s = 0, 1.0
    overrides = {**_folder_overrides(image_tree), "prefect.timeouts_s": {"prepare": 2}}
    try:
        state, (task_run,), logs = _run(write_tiny_params(tmp_path / "params.yaml"), overrides, tmp_path / "data")
    finally:
        FlakyFS.delay_s = 0.0
    assert state.is_failed() and task_run.state.name == "TimedOut" and task_run.run_count == 1
    assert "exceeded timeout of 2" in logs


def test_which_errors_are_transient():
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError()) and is_transient(OSError("EIO"))
    assert not any(is_transient(e) for e in (FileNotFoundError(), PermissionError(), ValueError(), RuntimeError()))
    # the Kubernetes API: busy, failing or unreachable is worth a retry; refusing the request is not
    assert is_transient(ApiException(status=503)) and is_transient(ApiException(status=429)) and is_transient(ProtocolError("reset"))
    assert not is_transient(ApiException(status=403)) and not is_transient(ApiException(status=422))


def test_stage_logs_outside_a_run_stay_on_the_console_without_warnings(caplog):
    stage_logs_to_prefect()
    stage_logs_to_prefect()
    stage_logger = logging.getLogger("selftrain")
    assert sum(isinstance(h, APILogHandler) for h in stage_logger.handlers) == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stage_logger.info("a stage called outside any flow")
    assert [str(w.message) for w in caught] == []
    assert "a stage called outside any flow" in caplog.text
