"""Artifact URIs (local paths or s3://...), atomic writes and content hashes.

An artifact is a directory. It is complete exactly when its MANIFEST.json exists: the
manifest lists every file with its sha256 and is written last, so readers never see a
half-written artifact, and the manifest's own hash is the artifact's content hash.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import socket
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem
from s3fs.utils import FileExpired

MANIFEST = "MANIFEST.json"
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
    check_locks()
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


def copy(src: str, dst: str) -> None:
    """Copy one file (within one store: a server-side copy on S3); the copy appears whole or not at all."""
    fs, path = _fs(src)
    if isinstance(fs, LocalFileSystem):
        write_bytes(dst, read_bytes(src))
    else:
        check_locks()
        fs.copy(path, _fs(dst)[1])


def remove(uri: str) -> None:
    """Delete a file or directory if it is there (not in a process that lost a lock it held: LockLost)."""
    check_locks()
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


def save_arrays(uri: str, **arrays: np.ndarray) -> None:
    """Save numpy arrays as .npz (no pickled objects: strings must be fixed-width unicode arrays)."""
    buf = io.BytesIO()
    np.savez(buf, allow_pickle=False, **arrays)
    write_bytes(uri, buf.getvalue())


def load_arrays(uri: str) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(read_bytes(uri)), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise ArtifactError(f"'{uri}' is not a readable .npz array file: {e}") from None


@dataclass(frozen=True)
class NpzColumn:
    """One array of an uncompressed .npz, known by its .npy header and read in row batches as they are needed:
    numpy reads a member whole, and an unlabeled pool of millions of images need not fit in memory."""

    uri: str
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype

    def batches(self, rows: slice, size: int) -> Iterator[np.ndarray]:
        """The rows `rows` (step 1), `size` at a time, in order."""
        start, stop, _ = rows.indices(self.shape[0])
        row_bytes = self.dtype.itemsize * math.prod(self.shape[1:])
        with _npz_member(self.uri, self.name) as (member, _, _):
            try:
                member.seek(
                    member.tell() + start * row_bytes
                )  # forward, by reading: a part of the pool starts mid-file
                for first in range(start, stop, size):
                    n = min(size, stop - first)
                    data = member.read(n * row_bytes)
                    if len(data) < n * row_bytes:
                        raise EOFError(f"row {first + len(data) // row_bytes} of {self.shape[0]}")
                    yield np.frombuffer(bytearray(data), self.dtype).reshape(
                        n, *self.shape[1:]
                    )  # writable, as torch wants
            except (zipfile.BadZipFile, EOFError, OSError) as e:
                raise ArtifactError(
                    f"'{self.uri}' is cut short or corrupt in '{self.name}' ({e}): rebuild it"
                ) from None


@contextmanager
def _npz_member(uri: str, name: str) -> Iterator[tuple[Any, tuple[int, ...], np.dtype]]:
    fs, path = _fs(uri)
    files = ExitStack()
    try:
        member = files.enter_context(
            files.enter_context(zipfile.ZipFile(files.enter_context(fs.open(path, "rb")))).open(f"{name}.npy")
        )
        version = np.lib.format.read_magic(member)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(member)
    except FileNotFoundError:
        files.close()
        raise ArtifactError(f"'{uri}' not found") from None
    except KeyError:
        files.close()
        raise ArtifactError(f"'{uri}' has no array named {name}") from None
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        files.close()
        raise ArtifactError(f"'{uri}' is not a readable .npz array file: {e}") from None
    if fortran_order or dtype.hasobject:
        files.close()
        raise ArtifactError(f"'{uri}': '{name}' is not a row-major array of plain values")
    with files:
        yield member, tuple(shape), dtype


def npz_column(uri: str, name: str) -> NpzColumn:
    """The array `name` of the .npz at `uri`, to read in row batches (see NpzColumn); reads only its header now."""
    with _npz_member(uri, name) as (_, shape, dtype):
        return NpzColumn(uri, name, shape, dtype)


def save_array(uri: str, a: np.ndarray) -> None:
    """Save one array as .npy (no pickled objects), atomically."""
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    write_bytes(uri, buf.getvalue())


def load_array(uri: str) -> np.ndarray:
    """One .npy array: memory-mapped read-only where the file is local (pages are read as they are touched),
    read whole from object storage."""
    fs, path = _fs(uri)
    try:
        if isinstance(fs, LocalFileSystem):
            return np.asarray(
                np.load(path, mmap_mode="r", allow_pickle=False)
            )  # a plain view: np.memmap's indexing is slow
        return np.load(io.BytesIO(read_bytes(uri)), allow_pickle=False)
    except FileNotFoundError:
        raise ArtifactError(f"'{uri}' not found") from None
    except (ValueError, OSError) as e:
        raise ArtifactError(f"'{uri}' is not a readable .npy array file: {e}") from None


def prefetch(uri: str) -> None:
    """Ask the OS to start reading a local file into the page cache in the background (a no-op elsewhere):
    the next shard's reads then overlap this one's compute."""
    fs, path = _fs(uri)
    if isinstance(fs, LocalFileSystem) and hasattr(os, "posix_fadvise"):
        with suppress(OSError):
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)


def load_shards(uri: str, prefix: str) -> dict[str, np.ndarray]:
    """Row shards `uri/prefix-00000.npz`, `-00001`, ... (large sets go to object storage in pieces: no one blob,
    no file per image), their arrays concatenated in shard order."""
    fs, path = _fs(uri)
    files = sorted(fs.glob(f"{path.rstrip('/')}/{prefix}-[0-9][0-9][0-9][0-9][0-9].npz"))
    if not files:
        raise ArtifactError(f"'{uri}' has no {prefix}-*.npz shards")
    parts = [load_arrays(join(uri, f.rsplit("/", 1)[-1])) for f in files]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def save_array_files(uri: str, **arrays: np.ndarray) -> None:
    """One .npz per named array under the directory `uri` (a set too big for one blob, split by its natural parts)."""
    for name, a in arrays.items():
        save_arrays(join(uri, f"{name}.npz"), **{name: a})


def load_array_files(uri: str) -> dict[str, np.ndarray]:
    fs, path = _fs(uri)
    files = sorted(fs.glob(f"{path.rstrip('/')}/*.npz"))
    if not files:
        raise ArtifactError(f"'{uri}' has no .npz files")
    out: dict[str, np.ndarray] = {}
    for f in files:
        out.update(load_arrays(join(uri, f.rsplit("/", 1)[-1])))
    return out


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(uri: str) -> str:
    fs, path = _fs(uri)
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def require_complete(uri: str) -> dict[str, Any]:
    """Return the manifest of a complete artifact directory, or raise naming what is wrong: missing, incomplete (no
    manifest), or files that are not the ones its manifest lists (missing, extra, another size, or on S3 another
    ETag: the files of two writers mixed). One listing of the directory; no file is read."""
    if not exists(uri):
        raise ArtifactError(f"artifact '{uri}' not found: run the stage that produces it first")
    if not exists(join(uri, MANIFEST)):
        raise ArtifactError(f"artifact '{uri}' is incomplete (no {MANIFEST}): its stage did not finish; rerun it")
    manifest = read_json(join(uri, MANIFEST))
    sizes, etags = manifest.get("sizes"), manifest.get("etags")
    if sizes is not None:
        found = _listing(uri)
        wrong = sorted(
            (set(found) ^ set(manifest["files"]))
            | {
                rel
                for rel in set(found) & set(manifest["files"])
                if found[rel]["size"] != sizes.get(rel)
                or (etags is not None and found[rel].get("ETag") != etags.get(rel))
            }
        )
        if wrong:
            raise ArtifactError(
                f"artifact '{uri}' does not match its {MANIFEST} ({', '.join(wrong[:5])}"
                f"{', ...' if len(wrong) > 5 else ''}: missing, extra or changed since it was written, e.g. by two "
                "writers at once); rerun the stage that produces it"
            )
    return manifest


def _listing(uri: str) -> dict[str, dict[str, Any]]:
    """The files under a directory (relative path -> size, and ETag on S3), the manifest left out."""
    fs, root = _fs(uri)
    root = root.rstrip("/")
    return {
        full[len(root) + 1 :]: info
        for full, info in fs.find(root, detail=True).items()
        if full[len(root) + 1 :] != MANIFEST
    }


def content_hash(uri: str) -> str:
    """sha256 of an artifact: of its manifest's file list (names and sha256) for a directory, of its bytes for a file.
    Sizes and ETags in the manifest are left out: the same files give the same hash on disk and on S3."""
    fs, path = _fs(uri)
    if fs.isdir(path):
        return sha256_bytes(_manifest_bytes({"files": require_complete(uri)["files"]}))
    return sha256_file(uri)


def _manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


_HOST = socket.gethostname().replace("/", "_")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _remove_dead_staging(parent: str, name: str) -> None:
    """Clear what killed writers of `name` on this host left beside it: staging (`.name.tmp-HOST-PID-TOKEN`) is
    removed; a replaced copy (`.name.old-...`) is put back if the kill came between the two renames (no `name`),
    else removed. Another host's, or a live process's, are left alone."""
    pattern = re.compile(rf"\.{re.escape(name)}\.(tmp|old)-{re.escape(_HOST)}-(\d+)-[0-9a-f]{{12}}")
    try:
        entries = sorted(os.listdir(parent))
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry)
        if not m or _pid_alive(int(m.group(2))):
            continue
        full, target = os.path.join(parent, entry), os.path.join(parent, name)
        if m.group(1) == "old" and not os.path.lexists(target):
            os.replace(full, target)
        elif os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            with suppress(FileNotFoundError):
                os.remove(full)


STALE_STAGING_S = 24 * 3600.0  # S3 staging in which nothing was written for a day: its writer is gone


def _remove_stale_staging_s3(fs: Any, parent: str, name: str) -> None:
    """Clear what killed writers of `name` left on S3 (`.name.tmp-TOKEN/`). An object store keeps no writer's host
    or pid, so age decides: staging whose newest object is older than STALE_STAGING_S is removed (a live writer
    adds its files within minutes: training stages stage only their final outputs, infer a shard every few
    seconds to minutes)."""
    try:
        entries = fs.ls(parent, detail=False, refresh=True)
    except FileNotFoundError:
        return
    for entry in entries:
        if not entry.rstrip("/").rsplit("/", 1)[-1].startswith(f".{name}.tmp-"):
            continue
        stamps = [
            info["LastModified"].timestamp()
            for info in fs.find(entry, detail=True).values()
            if info.get("LastModified")
        ]
        if stamps and time.time() - max(stamps) > STALE_STAGING_S:
            log.info(
                "removing '%s': staging of a writer that stopped %.0f h ago", entry, (time.time() - max(stamps)) / 3600
            )
            with suppress(FileNotFoundError):
                fs.rm(entry, recursive=True)


@contextmanager
def atomic_dir(uri: str) -> Iterator[str]:
    """Build an artifact directory under a temporary name; on success, write its manifest and move it into place.

    On error nothing changes at `uri`: a previous complete artifact stays as it was.
    """
    fs, path = _fs(uri)
    name = path.rstrip("/").rsplit("/", 1)[-1]
    parent = path.rstrip("/")[: -len(name)].rstrip("/") or "."
    token = uuid.uuid4().hex[:12]
    if isinstance(fs, LocalFileSystem):
        _remove_dead_staging(parent, name)
        # the writer's host and pid in the name: a later writer can tell a dead one's leftovers from a live one's
        staging = os.path.join(parent, f".{name}.tmp-{_HOST}-{os.getpid()}-{token}")
        try:
            os.makedirs(staging)
        except OSError as e:
            if e.errno in _NOT_WRITABLE:
                raise _not_writable(uri, e) from None
            raise
        try:
            yield staging
            _write_manifest(staging)
            check_locks()  # a run that lost its generation's lock does not put an output in place
            old = os.path.join(parent, f".{name}.old-{_HOST}-{os.getpid()}-{token}")
            if os.path.lexists(path):
                os.replace(path, old)
            os.replace(staging, path)
            if os.path.lexists(old):
                shutil.rmtree(old) if os.path.isdir(old) and not os.path.islink(old) else os.remove(old)
        finally:
            if os.path.exists(staging):
                shutil.rmtree(staging)
    else:
        # Object stores have no rename: stage under a sibling prefix, then drop the old manifest (marking the old
        # artifact incomplete), copy the files over, remove those the new one does not have, and write the new
        # manifest last, with the ETags the copies got: a reader (require_complete) refuses a directory whose
        # files are not those, which is what two writers copying at once would leave.
        proto = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
        _remove_stale_staging_s3(fs, parent, name)
        staging = f"{proto}://{parent}/.{name}.tmp-{token}"
        try:
            yield staging
            manifest = _write_manifest(staging, write=False)
            check_locks()
            sfs, spath = _fs(staging)
            staged = _listing(staging)
            remove(join(uri, MANIFEST))
            for rel in manifest["files"]:
                fs.copy(f"{spath}/{rel}", f"{path}/{rel}")
            final = _listing(uri)
            for rel in set(final) - set(manifest["files"]):
                remove(join(uri, rel))
            # a copy of a single-part object keeps its ETag (the MD5 of its bytes): expect this writer's own, not
            # what the listing shows now (another writer's copies may have landed); a multipart one gets a new ETag
            manifest["etags"] = {
                rel: staged[rel]["ETag"] if "-" not in staged[rel]["ETag"] else final[rel]["ETag"]
                for rel in manifest["files"]
            }
            write_bytes(join(uri, MANIFEST), _manifest_bytes(manifest))
        finally:
            sfs, spath = _fs(staging)
            if sfs.exists(spath):
                sfs.rm(spath, recursive=True)


def _write_manifest(uri: str, write: bool = True) -> dict[str, Any]:
    """The manifest of the files under `uri` (sha256 and size of each); written there unless `write` is False."""
    fs, root = _fs(uri)
    proto = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
    files, sizes = {}, {}
    for full, info in sorted(fs.find(root, detail=True).items()):
        rel = full[len(root.rstrip("/")) + 1 :]
        if rel != MANIFEST:
            files[rel] = _local_sha256(full) if isinstance(fs, LocalFileSystem) else sha256_file(f"{proto}://{full}")
            sizes[rel] = info["size"]
    manifest = {"files": files, "sizes": sizes}
    if write:
        write_bytes(join(uri, MANIFEST), _manifest_bytes(manifest))
    return manifest
