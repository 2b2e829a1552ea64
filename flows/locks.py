"""One writer per generation: a flow run holds ROOT/genK/.lock while it writes generation K (gen0: the data, the
teacher and the robustness sets), so two runs on one artifact root never write the same generation at once;
the second fails at once, naming the first. The holder renews the lock every few minutes; one left by a run that
was killed is taken over once its heartbeat is older than STALE_AFTER_S. DVC runs need none: `dvc repro` locks
its repository itself."""

from __future__ import annotations

import datetime
import os
import socket
from contextlib import AbstractContextManager

from prefect.runtime import flow_run

from selftrain import artifacts
from selftrain.layout import Generation

STALE_AFTER_S = 600.0  # a killed run's generation is free again 10 minutes after its last heartbeat


def writing(root: str, name: str) -> AbstractContextManager[None]:
    """Hold generation `name`'s lock under `root` for the block."""
    owner = {
        "flow_run": str(flow_run.get_id()),
        "flow_run_name": flow_run.get_name(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return artifacts.exclusive(artifacts.join(Generation(root, name).dir, ".lock"), owner, STALE_AFTER_S)
