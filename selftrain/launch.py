"""`selftrain-torchrun`: torchrun (torch.distributed.run, every argument the same) that exits with the failed rank's
own exit code.

torchrun reports any failed worker as exit status 1, so a stage's 75 (transient I/O: worth another pod), 2 (bad
input) and 3 (a failed gate) all became 1, a bug, and the Job's podFailurePolicy could no longer tell them apart.
This wraps torch.distributed.run's own `run` rather than writing a launcher: the first failed rank's exit code
(a signal -N as 128 + N, as a shell reports it) is the pod's.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import parse_args, run


def exit_status(failure_exitcode: int) -> int:
    """A worker's exit code as the pod's: itself, a signal -N as 128 + N, never 0 for a failure."""
    if failure_exitcode < 0:
        return 128 - failure_exitcode
    return failure_exitcode or 1


def main(argv: list[str] | None = None) -> None:
    try:
        run(parse_args(sys.argv[1:] if argv is None else argv))
    except ChildFailedError as e:
        _, failure = e.get_first_failure()
        print(f"selftrain-torchrun: rank {failure.local_rank} exited with {failure.exitcode}", file=sys.stderr)
        sys.exit(exit_status(failure.exitcode))


if __name__ == "__main__":
    main()
