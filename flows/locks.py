"""One writer per artifact root: a flow run holds ROOT/.lock for the whole run (the data, generation 0, every
generation), so a second run on the same root, with the same params or others, fails at once, naming the first,
instead of rewriting the data and the teacher that the first one's generations are reading. The holder renews the
lock every few minutes; one left by a run that was killed is taken over once its heartbeat is older than
STALE_AFTER_S. DVC runs need none: `dvc repro` locks its repository itself."""

from __future__ import annotations

import datetime
import os
import socket
from contextlib import AbstractContextManager, nullcontext

from prefect.runtime import flow_run

from selftrain import artifacts

STALE_AFTER_S = 600.0  # a killed run's root is free again 10 minutes after its last heartbeat


def writing(root: str) -> AbstractContextManager[None]:
    """Hold `root`'s lock for the block; inside a block that holds it already (a generation subflow of the
    self-training flow, in the same process), nothing more."""
    uri = artifacts.join(root, ".lock")
    if artifacts.holds(uri):
        return nullcontext()
    owner = {
        "flow_run": str(flow_run.get_id()),
        "flow_run_name": flow_run.get_name(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return artifacts.exclusive(uri, owner, STALE_AFTER_S)
