"""Stage logs (progress summaries, per-epoch metrics) into the Prefect run's log as well as the console."""
from __future__ import annotations

import logging


def stage_logs_to_prefect() -> None:
    """Give the stages' `selftrain` logger the handlers Prefect gives its extra loggers.

    What PREFECT_LOGGING_EXTRA_LOGGERS=selftrain does, without needing it set before Prefect starts;
    records still propagate to the console. Idempotent."""
    stage_logger = logging.getLogger("selftrain")
    for handler in logging.getLogger("prefect.extra").handlers:
        if handler not in stage_logger.handlers:
            stage_logger.addHandler(handler)
    stage_logger.setLevel(logging.INFO)
