"""Artifacts: every path a stage reads or writes is a URI, a local path or s3://..., written atomically and content
hashed. One concern per module (as timm keeps its utils): uris.py reads and writes one file, locks.py the
conditional writes and the heartbeat locks built on them, arrays.py numpy arrays and .npz columns, directories.py
atomic directories, their manifests and content hashes.
"""

from __future__ import annotations

# locks first: uris.py and locks.py import each other (uris.py says why)
from selftrain.artifacts.locks import LockLost, check_locks, create_exclusive, exclusive, holds, replace_if  # isort: split

from selftrain.artifacts.arrays import (
    NpzColumn,
    load_array,
    load_array_files,
    load_arrays,
    load_shards,
    npz_column,
    prefetch,
    save_array,
    save_array_files,
    save_arrays,
)
from selftrain.artifacts.directories import MANIFEST, STALE_STAGING_S, atomic_dir, content_hash, require_complete
from selftrain.artifacts.uris import (
    ArtifactError,
    copy,
    exists,
    is_local,
    join,
    read_bytes,
    read_json,
    remove,
    sha256_bytes,
    sha256_file,
    write_bytes,
    write_json,
)

__all__ = [
    "ArtifactError",
    "LockLost",
    "MANIFEST",
    "NpzColumn",
    "STALE_STAGING_S",
    "atomic_dir",
    "check_locks",
    "content_hash",
    "copy",
    "create_exclusive",
    "exclusive",
    "exists",
    "holds",
    "is_local",
    "join",
    "load_array",
    "load_array_files",
    "load_arrays",
    "load_shards",
    "npz_column",
    "prefetch",
    "read_bytes",
    "read_json",
    "remove",
    "replace_if",
    "require_complete",
    "save_array",
    "save_array_files",
    "save_arrays",
    "sha256_bytes",
    "sha256_file",
    "write_bytes",
    "write_json",
]
