"""Stage logs (progress summaries, per-epoch metrics) into the Prefect run's log as well as the console."""

from __future__ import annotations

import logging

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

_HANDLER = "selftrain-to-prefect-api"


def _in_a_run(record: logging.LogRecord) -> bool:
    # the same process may call stages outside any flow (a notebook, a benchmark): those stay console-only
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None


def stage_logs_to_prefect() -> None:
    """Send the stages' `selftrain` logger to the API of the flow or task run it is logged in.

    What PREFECT_LOGGING_EXTRA_LOGGERS=selftrain does, without needing it set before Prefect starts, and
    without Prefect's warning for records logged outside a run; records still propagate to the console.
    Idempotent."""
    stage_logger = logging.getLogger("selftrain")
    if not any(h.get_name() == _HANDLER for h in stage_logger.handlers):
        handler = APILogHandler()
        handler.set_name(_HANDLER)
        handler.addFilter(_in_a_run)
        stage_logger.addHandler(handler)
    stage_logger.setLevel(logging.INFO)
