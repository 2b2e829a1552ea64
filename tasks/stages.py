"""One Prefect task per stage, named like the DAG; each calls the stage function unchanged.

`for_params(params, root)` gives the tasks with params.prefect's retries, timeouts and caching
(tasks.cache). Only transient errors are retried, with exponential backoff: the I/O errors that
selftrain.failures calls transient (a dropped connection, a read timeout, S3's 5xx, as s3fs and
botocore raise them), the Kubernetes API busy or out of reach, and a stage's Job that ran out of pods
on transient I/O. Bad params, bad data, a failed gate or a stage over its own timeout fail at once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import urllib3
from kubernetes.client import ApiException
from prefect import Task, get_client, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.task_engine import TaskRunTimeoutError
from prefect.tasks import exponential_backoff

from selftrain import artifacts, failures
from selftrain.params import Params
from selftrain.stages import STAGES, join_logit_parts
from tasks import job_manifests, kubernetes, pod_status
from tasks.cache import StageInputs, always_changed, outputs_complete, result_storage

TASKS: dict[str, Task] = {name: task(fn, name=name) for name, fn in STAGES.items()}


def is_transient(exc: BaseException) -> bool:
    """An error worth retrying: transient I/O (selftrain.failures), the Kubernetes API busy or unreachable (a retried
    stage finds its Job: tasks.kubernetes names it per flow run and stage), or a Job whose pods all failed on
    transient I/O (the retry starts a new Job). A stage over its own timeout would overrun again."""
    if isinstance(exc, TaskRunTimeoutError):
        return False
    if isinstance(exc, ApiException):
        return exc.status in (0, 429) or exc.status >= 500
    if isinstance(exc, (urllib3.exceptions.HTTPError, pod_status.JobFailedTransiently)):
        return True
    return failures.is_transient(exc)


def _retry_if_transient(task: Task, task_run: Any, state: Any) -> bool:
    # Prefect hands the exception over as the failed state's data
    return isinstance(state.data, BaseException) and is_transient(state.data)


class _StageCall:
    """A configured stage task that runs again when its outputs are missing, whatever its cache says."""

    def __init__(self, task: Task) -> None:
        self.task = task

    def __call__(self, params: Params, **kwargs: Any) -> Any:
        if self.task.cache_policy is not NO_CACHE and not outputs_complete(self.task.name, kwargs):
            return self.task.with_options(refresh_cache=True)(params, **kwargs)
        return self.task(params, **kwargs)


def flow_run_cancelled() -> bool:
    """The flow run this task belongs to, or one of its parents, is being cancelled (from the UI or the API)."""
    ids = {flow_run.get_id(), flow_run.get_parent_flow_run_id(), flow_run.get_root_flow_run_id()} - {None}
    try:
        with get_client(sync_client=True) as client:
            return any(
                state is not None and (state.is_cancelling() or state.is_cancelled())
                for state in (client.read_flow_run(i).state for i in ids)
            )
    except Exception as e:  # the Prefect API out of reach for a moment is not a cancel: look again at the next poll
        logging.getLogger("selftrain.kubernetes").warning("could not read the flow run's state (%s)", e)
        return False


def _as_job(name: str, root: str) -> Task:
    """The stage `name` as a task that runs it in a Kubernetes Job (tasks.kubernetes): same name, same arguments."""
    fn: Callable[..., Any] = STAGES[name]

    @functools.wraps(fn)
    def run_job(params: Params, **kwargs: Any) -> Any:
        parts = params.infer.parts if name == "infer" and params.infer.parts > 1 else None
        result = kubernetes.run_stage_job(
            params,
            name,
            kwargs,
            root=root,
            flow_run_id=str(flow_run.get_id() or "no-flow-run"),
            cancelled=flow_run_cancelled,
            parts=parts,
        )
        return (
            join_logit_parts(params, teacher=kwargs["teacher"], data=kwargs["data"], out=kwargs["out"])
            if parts
            else result
        )

    return task(run_job, name=name)


def for_params(params: Params, root: str) -> SimpleNamespace:
    """The stage tasks as attributes (`.train_teacher`, ...) with params.prefect's retries, timeouts and caching;
    cached results go to params.prefect.result_storage, by default under the artifact root. A stage with
    params `resources` runs as a Kubernetes Job when kubernetes.enabled, every other one in this process."""
    p = params.prefect
    uncached: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}
    caching = uncached
    if p.cache:
        storage = result_storage(p.result_storage or artifacts.join(root, ".prefect-results"))
        caching = {
            "cache_policy": StageInputs(),
            "persist_result": True,
            "result_storage": storage,
            "result_serializer": "json",
        }
    return SimpleNamespace(
        **{
            name.replace("-", "_"): _StageCall(
                t.with_options(
                    retries=p.retries,
                    retry_delay_seconds=exponential_backoff(p.retry_backoff_s)(p.retries) if p.retries else 0,
                    retry_condition_fn=_retry_if_transient,
                    timeout_seconds=p.timeout(name),
                    **(uncached if always_changed(name) else caching),
                )
            )
            for name, t in (
                (n, _as_job(n, root) if job_manifests.resources_for(params, n) else t) for n, t in TASKS.items()
            )
        }
    )
