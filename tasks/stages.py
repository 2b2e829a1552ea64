"""One Prefect task per stage, named like the DAG; each calls the stage function unchanged.

`for_params(params)` gives the tasks with params.prefect's retries and timeouts. Only transient
errors are retried (with exponential backoff): an OSError that is not a missing file, a refused
permission or the stage's own timeout: a dropped connection, a network timeout, an S3 hiccup. Bad params, bad data or a
failed gate raise ValueError / RuntimeError and fail the stage at once.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prefect import Task, task
from prefect.task_engine import TaskRunTimeoutError
from prefect.tasks import exponential_backoff

from selftrain.params import Params
from selftrain.stages import STAGES

TASKS: dict[str, Task] = {name: task(fn, name=name) for name, fn in STAGES.items()}

# a stage over its own timeout would overrun again; a network timeout (plain TimeoutError) is transient
_NOT_TRANSIENT = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, TaskRunTimeoutError)


def is_transient(exc: BaseException) -> bool:
    """An error worth retrying: I/O that may succeed next time."""
    return isinstance(exc, OSError) and not isinstance(exc, _NOT_TRANSIENT)


def _retry_if_transient(task: Task, task_run: Any, state: Any) -> bool:
    # Prefect hands the exception over as the failed state's data
    return isinstance(state.data, BaseException) and is_transient(state.data)


def for_params(params: Params) -> SimpleNamespace:
    """The stage tasks as attributes (`.train_teacher`, ...), each with params.prefect's retries and timeout."""
    p = params.prefect
    return SimpleNamespace(**{
        name.replace("-", "_"): t.with_options(
            retries=p.retries,
            retry_delay_seconds=exponential_backoff(p.retry_backoff_s)(p.retries) if p.retries else 0,
            retry_condition_fn=_retry_if_transient,
            timeout_seconds=p.timeout(name),
        )
        for name, t in TASKS.items()
    })
