"""numpy arrays as artifact files: .npz without pickles, one column of an .npz read in slices without loading it,
and arrays sharded over several files."""

from __future__ import annotations

import io
import math
import os
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from selftrain.artifacts.uris import ArtifactError, _fs, join, read_bytes, write_bytes


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
