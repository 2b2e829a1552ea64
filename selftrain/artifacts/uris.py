"""Reading and writing one artifact file by URI (a local path or s3://...): atomic writes (temp then rename; an S3
put is atomic already), JSON, sha256, copy and remove. Every write first checks the fence of locks.py."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import uuid
from contextlib import suppress
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

# locks.py imports this module's functions, and this module calls locks.check_locks: a cycle that
# selftrain/artifacts/__init__.py resolves by importing locks first
from selftrain.artifacts import locks

log = logging.getLogger("selftrain")


class ArtifactError(RuntimeError):
    """An artifact is missing, incomplete or corrupt."""


_s3_credentials_seen = False


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    if "s3" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
        _require_s3_credentials(uri)
    return fs, path


def _require_s3_credentials(uri: str) -> None:
    """Fail early, and in words, where botocore would fail late with NoCredentialsError deep in a stage."""
    global _s3_credentials_seen
    if not _s3_credentials_seen:
        import botocore.session  # s3fs's own dependency: the same search for credentials it makes

        _s3_credentials_seen = botocore.session.get_session().get_credentials() is not None
        if not _s3_credentials_seen:
            raise ArtifactError(
                f"no S3 credentials for '{uri}': set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE with "
                "~/.aws/credentials, or run with a role (IRSA / workload identity / instance profile); "
                "AWS_ENDPOINT_URL points at an S3-compatible store"
            )


# the errors that mean "this place cannot be written to", not "try again"
_NOT_WRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR}


def _not_writable(uri: str, e: OSError) -> ArtifactError:
    return ArtifactError(
        f"cannot write '{uri}': {e.strerror or e} ({e.filename or uri}); the artifact root must be writable: "
        "fix its permissions or choose another --out / --root"
    )


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def is_local(uri: str) -> bool:
    return isinstance(_fs(uri)[0], LocalFileSystem)


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = _fs(uri)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ArtifactError(f"'{uri}' not found") from None


# sha256 of the files write_bytes wrote here, while their bytes were in memory (by absolute path, with size and
# mtime to tell a file changed since): the manifest takes them instead of reading the files back
_written: dict[str, tuple[int, int, str]] = {}


def _local_sha256(path: str) -> str:
    known, st = _written.pop(os.path.abspath(path), None), os.stat(path)
    if known and known[:2] == (st.st_size, st.st_mtime_ns):
        return known[2]
    return sha256_file(path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write one file atomically: a temp name beside it, then rename (S3 puts are atomic already). Refused (LockLost)
    in a process that lost a lock it held: every write reads the locks first, as the heartbeat may not have noticed
    yet (a run paused past stale_after_s and resumed writes at once)."""
    locks.check_locks()
    _write_bytes(uri, data)


def _write_bytes(uri: str, data: bytes) -> None:
    fs, path = _fs(uri)
    if isinstance(fs, LocalFileSystem):
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        try:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            st = os.stat(path)
            _written[os.path.abspath(path)] = (st.st_size, st.st_mtime_ns, sha256_bytes(data))
        except OSError as e:
            if e.errno in _NOT_WRITABLE:
                raise _not_writable(uri, e) from None
            raise
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        fs.pipe_file(path, data)


def copy(src: str, dst: str) -> None:
    """Copy one file (within one store: a server-side copy on S3); the copy appears whole or not at all."""
    fs, path = _fs(src)
    if isinstance(fs, LocalFileSystem):
        write_bytes(dst, read_bytes(src))
    else:
        locks.check_locks()
        fs.copy(path, _fs(dst)[1])


def remove(uri: str) -> None:
    """Delete a file or directory if it is there (not in a process that lost a lock it held: LockLost)."""
    locks.check_locks()
    fs, path = _fs(uri)
    if fs.exists(path):
        with suppress(FileNotFoundError):  # removed meanwhile by someone else: what was asked
            fs.rm(path, recursive=True)


def read_json(uri: str) -> Any:
    try:
        return json.loads(read_bytes(uri))
    except json.JSONDecodeError as e:
        raise ArtifactError(f"'{uri}' is not valid JSON: {e}") from None


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(uri: str) -> str:
    fs, path = _fs(uri)
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
