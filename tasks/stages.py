"""One Prefect task per stage, named like the DAG; each calls the stage function unchanged.

`for_params(params, root)` gives the tasks with params.prefect's retries, timeouts and caching
(tasks.cache). Only transient errors are retried, with exponential backoff: an OSError that is not
a missing file, a refused permission or the stage's own timeout (a dropped connection, a network
timeout, an S3 hiccup). Bad params, bad data or a failed gate raise ValueError / RuntimeError and
fail the stage at once.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.task_engine import TaskRunTimeoutError
from prefect.tasks import exponential_backoff

from selftrain import artifacts
from selftrain.params import Params
from selftrain.stages import STAGES
from tasks.cache import StageInputs, outputs_complete, result_storage

TASKS: dict[str, Task] = {name: task(fn, name=name) for name, fn in STAGES.items()}

# a stage over its own timeout would overrun again; a network timeout (plain TimeoutError) is transient
_NOT_TRANSIENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, TaskRunTimeoutError)


def is_transient(exc: BaseException) -> bool:
    """An error worth retrying: I/O that may succeed next time."""
    return isinstance(exc, OSError) and not isinstance(exc, _NOT_TRANSIENT)


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


def for_params(params: Params, root: str) -> SimpleNamespace:
    """The stage tasks as attributes (`.train_teacher`, ...) with params.prefect's retries, timeouts and caching;
    cached results go to params.prefect.result_storage, by default under the artifact root."""
    p = params.prefect
    caching: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}
    if p.cache:
        storage = result_storage(p.result_storage or artifacts.join(root, ".prefect-results"))
        caching = {"cache_policy": StageInputs(), "persist_result": True, "result_storage": storage, "result_serializer": "json"}
    return SimpleNamespace(**{
        name.replace("-", "_"): _StageCall(t.with_options(
            retries=p.retries,
            retry_delay_seconds=exponential_backoff(p.retry_backoff_s)(p.retries) if p.retries else 0,
            retry_condition_fn=_retry_if_transient,
            timeout_seconds=p.timeout(name),
            **caching,
        ))
        for name, t in TASKS.items()
    })
