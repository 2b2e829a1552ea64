"""How a stage failed, in the terms every runner acts on: its exit code (the CLI's, which a Kubernetes Job's
podFailurePolicy reads) and whether trying again may help (what Prefect's retries and the Job's backoffLimit are for).

Transient: I/O that may succeed next time — a dropped connection, a read timeout, an endpoint out of reach, S3's
5xx / SlowDown. These are what s3fs, aiobotocore and botocore raise once their own retries are spent: botocore's
HTTPClientError (ConnectionClosedError, ReadTimeoutError) and ConnectionError (EndpointConnectionError,
ConnectTimeoutError) are not OSErrors; 5xx answers reach the caller as OSError (s3fs translates them).
Not transient: a missing file, a refused permission, a full or read-only disk, a name too long or a symlink loop,
bad params or data, a failed gate.
"""

from __future__ import annotations

import errno

import aiohttp
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError

EXIT_BUG = 1  # an uncaught exception: Python's own exit status, with its traceback
EXIT_BAD_INPUT = 2  # bad params or data: fix them; retrying cannot help
EXIT_GATE = 3  # a generation did not promote its student: the chain stopped, not a crash
EXIT_TRANSIENT = 75  # sysexits' EX_TEMPFAIL: transient I/O, worth another try (Job backoffLimit, Prefect retries)

_NOT_TRANSIENT = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError)
# a full, read-only or forbidden disk, a bad argument, a name too long, a symlink loop: the same path fails the same way
_NOT_TRANSIENT_ERRNO = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EINVAL,
    errno.ENAMETOOLONG,
    errno.ELOOP,
}


def is_transient(exc: BaseException) -> bool:
    """An error worth retrying: I/O that may succeed next time (see the module's docstring)."""
    if isinstance(
        exc, (HTTPClientError, BotoConnectionError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError)
    ):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, _NOT_TRANSIENT) and exc.errno not in _NOT_TRANSIENT_ERRNO
