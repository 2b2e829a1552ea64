"""Conditional writes and the locks built on them: create-if-absent and replace-if-unchanged (O_EXCL and an atomic
replace on disk; If-None-Match / If-Match on S3), a lock file with a heartbeat (`exclusive`), and the fence every
write checks (`check_locks`): a process that lost a lock it held writes nothing more."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from fsspec.implementations.local import LocalFileSystem
from s3fs.utils import FileExpired

from selftrain.artifacts.uris import ArtifactError, _fs, _write_bytes, log, read_bytes


def create_exclusive(uri: str, data: bytes) -> None:
    """Create a file that must not exist yet, FileExistsError if it does: O_EXCL here, a conditional put
    (If-None-Match: *) on S3. Of several writers racing, exactly one succeeds."""
    fs, path = _fs(uri)
    if isinstance(fs, LocalFileSystem):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with os.fdopen(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY), "wb") as f:
            f.write(data)
    else:
        _retry_conflicts(lambda: fs.pipe_file(path, data, mode="create"))


def _conditional_conflict(e: OSError) -> bool:
    """S3's 409 ConditionalRequestConflict: another write of the key was in flight when this conditional one came.
    S3 documents it beside 412 for racing conditional writes and asks the caller to retry."""
    response = getattr(e.__cause__, "response", None) or {}
    return response.get("Error", {}).get("Code") == "ConditionalRequestConflict"


def _retry_conflicts(write: Any, patience_s: float = 30.0) -> Any:
    """write(), again after a short wait while S3 answers it 409 ConditionalRequestConflict (neither s3fs nor botocore
    retries that code); any other error, or a conflict past `patience_s`, is raised."""
    deadline, wait = time.monotonic() + patience_s, 0.05
    while True:
        try:
            return write()
        except OSError as e:
            if not _conditional_conflict(e) or time.monotonic() > deadline:
                raise
        time.sleep(wait)
        wait = min(2 * wait, 1.0)


def _read_raw(uri: str) -> bytes | None:
    try:
        return read_bytes(uri)
    except (ArtifactError, FileExpired):  # gone, or replaced while it was read
        return None


def _parse_lock(raw: bytes | None) -> dict[str, Any] | None:
    try:
        held = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return held if isinstance(held, dict) else None


def replace_if(uri: str, expected: bytes, data: bytes | None) -> bool:
    """Replace the small file `uri` with `data` (None: delete it) only if its content is exactly `expected`; False
    when it is not (changed or gone). Atomic against other replace_if and create_exclusive callers: of several
    racing on the same content, one wins. On S3 a conditional put/delete (If-Match on the ETag of what was
    read); on disk the read, check and atomic replace happen under an O_EXCL mutex file beside it."""
    fs, path = _fs(uri)
    if not isinstance(fs, LocalFileSystem):
        return _retry_conflicts(lambda: _replace_if_s3(fs, path, expected, data))
    with _local_mutex(f"{path}.mutex"):
        try:
            with open(path, "rb") as f:
                current = f.read()
        except FileNotFoundError:
            return False
        if current != expected:
            return False
        if data is None:
            os.remove(path)
        else:
            _write_bytes(uri, data)  # temp + rename: the lock file is never absent, so no creator slips in
    return True


def _replace_if_s3(fs: Any, path: str, expected: bytes, data: bytes | None) -> bool:
    try:
        with fs.open(path, "rb") as f:  # s3fs reads with If-Match on the ETag it opened: content and ETag agree
            etag, current = f.details["ETag"], f.read()
    except (FileNotFoundError, FileExpired):  # gone, or replaced while it was read
        return False
    if current != expected:
        return False
    bucket, key, _ = fs.split_path(path)
    try:
        if data is None:
            fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=etag)
        else:
            fs.pipe_file(path, data, IfMatch=etag)
    except FileNotFoundError:
        return False
    except OSError as e:
        if e.errno == errno.EINVAL:  # 412 PreconditionFailed: another writer changed it since it was read
            return False
        raise
    fs.invalidate_cache(path)
    return True


@contextmanager
def _local_mutex(path: str) -> Iterator[None]:
    """A file created with O_EXCL around a read-compare-replace of a lock file (held for microseconds). One left by a
    process killed inside it is removed once a minute old."""
    deadline = time.monotonic() + 30
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            with suppress(FileNotFoundError):
                if time.time() - os.stat(path).st_mtime > 60:
                    os.remove(path)
            if time.monotonic() > deadline:
                raise ArtifactError(
                    f"'{path}' has been held for 30 s: remove it if no selftrain run is writing there"
                ) from None
            time.sleep(0.001)
    try:
        yield
    finally:
        os.close(fd)
        os.remove(path)


class LockLost(ArtifactError):
    """This run's lock was taken over (it went too long without a heartbeat): it must not write any more."""


# the locks this process holds (uri -> token) and those it lost: artifact commits check them, so a run that lost
# its generation's lock stops writing there (a fence; the heartbeat notices a loss within stale_after_s / 4)
_held: dict[str, str] = {}


_lost: set[str] = set()


_held_guard = threading.Lock()


def holds(uri: str) -> bool:
    """This process holds the lock `uri` (taken with `exclusive` and not released)."""
    with _held_guard:
        return uri in _held


def check_locks() -> None:
    """Raise LockLost if a lock this process holds was taken over: read each one (not only the heartbeat's word).
    Free in a process that holds none (every stage process but a flow's)."""
    if not _held:
        return
    with _held_guard:
        held, lost = dict(_held), set(_lost)
    for uri, token in held.items():
        if uri in lost or (_parse_lock(_read_raw(uri)) or {}).get("token") != token:
            with _held_guard:
                _lost.add(uri)
            raise LockLost(
                f"this run no longer holds '{uri}': another run took it over (this one went "
                "without a heartbeat for too long, paused or cut off); it stops here rather than write beside it"
            )


@contextmanager
def exclusive(uri: str, owner: dict[str, Any], stale_after_s: float = 600.0) -> Iterator[None]:
    """Hold the lock file `uri` (naming `owner`) for the block; another live holder makes this fail at once, naming it.

    The holder renews the file every stale_after_s / 4 (a heartbeat, from a thread); a lock whose heartbeat is
    older than stale_after_s was left by a run that died (killed, its pod evicted) and is taken over, with a
    warning. A lock without a heartbeat is never taken over. Takeover, renewal and release are conditional on the
    file being exactly what this run last saw (replace_if): two takers cannot both win, and a holder whose lock
    was taken over cannot renew or remove the new holder's. Such a holder stops writing: its next artifact
    commit raises LockLost (check_locks), and so does the end of the block."""
    token = uuid.uuid4().hex

    def record() -> bytes:
        return json.dumps(
            {**owner, "token": token, "heartbeat": time.time(), "stale_after_s": stale_after_s}, sort_keys=True
        ).encode()

    mine = record()
    try:
        create_exclusive(uri, mine)
    except FileExistsError:
        raw = _read_raw(uri)
        held = _parse_lock(raw)
        age = time.time() - held["heartbeat"] if held and isinstance(held.get("heartbeat"), (int, float)) else None
        who = (
            {k: v for k, v in held.items() if k not in ("token", "heartbeat", "stale_after_s")}
            if held
            else "an unknown run"
        )
        if raw is None or age is None or age <= (held or {}).get("stale_after_s", stale_after_s):
            beat = f" (its last heartbeat {age:.0f} s ago)" if age is not None else ""
            raise ArtifactError(
                f"'{uri}' is held by {who}{beat}: another run is writing there. Wait for it to finish; a lock "
                f"whose holder stops renewing it is taken over after {stale_after_s:.0f} s, one without a "
                "heartbeat never: delete that file if its run is gone"
            ) from None
        log.warning(
            "'%s': taking over the lock of %s, whose last heartbeat was %.0f s ago (the run died)", uri, who, age
        )
        if not replace_if(uri, raw, mine):
            raise ArtifactError(
                f"'{uri}' was taken over by another run at the same moment: it is writing there"
            ) from None
    with _held_guard:
        _held[uri] = token
        _lost.discard(uri)
    stop = threading.Event()

    def heartbeat() -> None:
        nonlocal mine
        while not stop.wait(stale_after_s / 4):
            renewed = record()
            try:
                if not replace_if(uri, mine, renewed):
                    with _held_guard:
                        _lost.add(uri)
                    log.error(
                        "'%s' is no longer held by this run (taken over while it went %.0f s without a heartbeat): it "
                        "writes nothing more there",
                        uri,
                        stale_after_s,
                    )
                    return
                mine = renewed
            except Exception as e:  # a blip of the store: the next beat tries again
                log.warning("'%s': could not renew the lock: %s", uri, e)

    beating = threading.Thread(target=heartbeat, name=f"lock {uri}", daemon=True)
    beating.start()
    try:
        yield
        check_locks()
    finally:
        stop.set()
        beating.join()
        with _held_guard:
            _held.pop(uri, None)
            lost = uri in _lost
            _lost.discard(uri)
        if not lost:
            replace_if(uri, mine, None)  # only the record this run wrote: never a new holder's
