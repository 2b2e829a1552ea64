"""The stages as Prefect tasks: transient I/O errors are retried, deterministic ones fail at once and say why.

Real stages in real flows on Prefect's test server, reading the user's folders from a real S3 endpoint (moto) behind
tests/fault_proxy.py, which drops connections and stalls answers: the errors are the ones s3fs and botocore raise.
"""

import errno
import logging
import uuid
import warnings
from pathlib import Path

import pytest
import s3fs
from botocore.exceptions import ConnectionClosedError, EndpointConnectionError, ReadTimeoutError
from fault_proxy import FaultProxy, sequence
from kubernetes.client import ApiException
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from prefect.client.schemas.sorting import LogSort, TaskRunSort
from prefect.logging.handlers import APILogHandler
from prefect.testing.utilities import prefect_test_harness
from urllib3.exceptions import ProtocolError

from conftest import S3_BUCKET, write_image, write_tiny_params
from flows.logs import stage_logs_to_prefect
from selftrain.data import load_split
from selftrain.params import load_params
from tasks import stages as tasks
from tasks.pod_status import JobFailed, JobFailedTransiently
from tasks.stages import is_transient


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
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
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=50,
        )
        logs = client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), sort=LogSort.TIMESTAMP_ASC, limit=200, offset=0
        )
    return state, task_runs, "\n".join(log.message for log in logs)


def _folder_overrides(root: str):
    return {
        "data.source": "folders",
        "data.image_size": 16,
        "data.folders": {s: f"{root}/{s}" for s in ("labeled", "unlabeled", "val", "test")},
        "prefect.retries": 3,
        "prefect.retry_backoff_s": 0,
    }


@pytest.fixture
def s3_tree(image_tree, s3_server):
    """image_tree uploaded to the S3 endpoint under a prefix of its own: (s3 root, prefix). Uploaded with s3fs's usual
    tries and timeouts: the one-try client a test then asks for (one_try_s3) timed the upload out on a busy machine."""
    prefix = f"tree-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem().put(str(image_tree), f"{S3_BUCKET}/{prefix}", recursive=True)
    return f"s3://{S3_BUCKET}/{prefix}", prefix


def _through(proxy: FaultProxy, monkeypatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    s3fs.S3FileSystem.clear_instance_cache()


def test_transient_io_errors_are_retried_until_the_stage_completes(s3_tree, one_try_s3, tmp_path, monkeypatch):
    root, prefix = s3_tree
    # the first requests for the user's folders: a connection dropped twice (aiohttp tries again once on its own, then
    # botocore's ConnectionClosedError), then an answer that never comes (ReadTimeoutError); neither is an OSError
    with FaultProxy(
        one_try_s3["AWS_ENDPOINT_URL"], sequence(["drop", "drop", "stall"], "GET", prefix), stall_s=3
    ) as proxy:
        _through(proxy, monkeypatch)
        state, (task_run,), logs = _run(
            write_tiny_params(tmp_path / "params.yaml"), _folder_overrides(root), tmp_path / "data"
        )
    assert [f[0] for f in proxy.faults] == ["drop", "drop", "stall"]
    assert state.is_completed() and task_run.state.is_completed()
    assert "prepare: {'labeled': 6, " in logs  # the stage's own log line reached the run's log
    assert "ConnectionClosedError" in logs and "Read timeout on endpoint URL" in logs
    assert task_run.run_count == 3  # two failures, then the run that worked
    assert load_split(str(tmp_path / "data"), "labeled").labels.tolist() == [0, 0, 0, 1, 1, 1]


def test_bad_data_fails_at_once_with_the_reason_in_the_run_logs(image_tree, tmp_path):
    (image_tree / "val" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    state, (task_run,), logs = _run(
        write_tiny_params(tmp_path / "params.yaml"), _folder_overrides(str(image_tree)), tmp_path / "data"
    )
    assert state.is_failed() and task_run.state.is_failed() and task_run.run_count == 1
    assert "broken.png: truncated image" in logs
    assert not (tmp_path / "data").exists()


def test_bad_params_fail_the_flow_at_once_with_the_key_in_the_run_logs(tmp_path):
    state, task_runs, logs = _run(
        write_tiny_params(tmp_path / "params.yaml"), {"student.epochs": -1}, tmp_path / "data"
    )
    assert state.is_failed() and task_runs == []
    assert "student.epochs" in logs


def test_a_stage_over_its_timeout_fails_without_retries(s3_tree, one_try_s3, tmp_path, monkeypatch):
    root, prefix = s3_tree
    overrides = {**_folder_overrides(root), "prefect.timeouts_s": {"prepare": 2}}
    # a slow link: every listing of the user's folders answers a second late (well within the read timeout)
    with FaultProxy(
        one_try_s3["AWS_ENDPOINT_URL"], sequence(["delay"] * 50, "GET", f"prefix={prefix}"), stall_s=1
    ) as proxy:
        _through(proxy, monkeypatch)
        state, (task_run,), logs = _run(write_tiny_params(tmp_path / "params.yaml"), overrides, tmp_path / "data")
    assert state.is_failed() and task_run.state.name == "TimedOut" and task_run.run_count == 1
    assert "exceeded timeout of 2" in logs


@flow
def listed_prepare_flow(params_path: str, overrides: dict, root: str) -> dict:
    params = load_params(params_path, overrides)
    stages = tasks.for_params(params, root)
    stages.list_data(params, out=f"{root}/data-listing.json")
    return stages.prepare(params, listing=f"{root}/data-listing.json", out=f"{root}/data")


def _prepare_state(params_path: Path, overrides: dict, root: Path) -> str:
    state = listed_prepare_flow(str(params_path), overrides, str(root), return_state=True)
    with get_client(sync_client=True) as client:
        run_id = state.state_details.flow_run_id
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])), limit=10)
    return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs}["prepare"]


def test_prepare_runs_again_when_the_users_images_change_and_not_otherwise(image_tree, tmp_path):
    """The cache key of prepare sees list-data's fingerprint: same images, a cache hit; 8 more images and a class, a
    rerun whose splits hold them (a key of code and params alone would reuse the old splits)."""
    params, overrides = write_tiny_params(tmp_path / "params.yaml"), _folder_overrides(str(image_tree))
    assert _prepare_state(params, overrides, tmp_path / "run") == "Completed"
    assert _prepare_state(params, overrides, tmp_path / "run") == "Cached"
    for i in range(8):
        write_image(image_tree / "labeled" / ("bird" if i < 4 else "cat") / f"new{i}.png", 150 + i)
    assert _prepare_state(params, overrides, tmp_path / "run") == "Completed"
    labeled = load_split(str(tmp_path / "run" / "data"), "labeled")
    assert labeled.classes == ("bird", "cat", "dog") and len(labeled) == 14


def test_which_errors_are_transient():
    assert is_transient(ConnectionResetError()) and is_transient(TimeoutError()) and is_transient(OSError("EIO"))
    # what s3fs raises once its tries are spent: botocore's errors (not OSErrors) and S3's 5xx as OSError
    assert is_transient(ConnectionClosedError(endpoint_url="http://s3")) and is_transient(
        ReadTimeoutError(endpoint_url="http://s3")
    )
    assert is_transient(EndpointConnectionError(endpoint_url="http://s3")) and is_transient(
        OSError(121, "InternalError")
    )
    assert not any(
        is_transient(e)
        for e in (FileNotFoundError(), PermissionError(), ValueError(), RuntimeError(), OSError(28, "No space"))
    )
    # the same path fails the same way next time: a symlink loop, a name too long (as the OS raises them)
    assert not is_transient(OSError(errno.ELOOP, "Too many levels of symbolic links"))
    assert not is_transient(OSError(errno.ENAMETOOLONG, "File name too long"))
    # the Kubernetes API: busy, failing or unreachable is worth a retry; refusing the request is not
    assert (
        is_transient(ApiException(status=503))
        and is_transient(ApiException(status=429))
        and is_transient(ProtocolError("reset"))
    )
    assert not is_transient(ApiException(status=403)) and not is_transient(ApiException(status=422))
    # a Job whose pods all failed on transient I/O is tried again as a new Job; any other failed Job is not
    assert is_transient(JobFailedTransiently("exit 75")) and not is_transient(JobFailed("exit 2"))


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
