"""Artifact directories: written atomically (a staging directory, renamed or copied in whole) and complete exactly when
their MANIFEST.json exists; the manifest lists every file with its sha256 and is written last, and its own hash is
the artifact's content hash."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from selftrain.artifacts import locks
from selftrain.artifacts.uris import (
    _NOT_WRITABLE,
    ArtifactError,
    _fs,
    _local_sha256,
    _not_writable,
    exists,
    join,
    log,
    read_json,
    remove,
    sha256_bytes,
    sha256_file,
    write_bytes,
)

MANIFEST = "MANIFEST.json"


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
            locks.check_locks()  # a run that lost its generation's lock does not put an output in place
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
            locks.check_locks()
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
