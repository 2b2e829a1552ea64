"""The logit store: a teacher's outputs on the unlabeled set, computed once and kept.

Layout of a store directory, one file per column per shard (50k rows by default):
  header.json                format, teacher and unlabeled-set hashes, class count, k, dtype, shards
  shard-00000.ids.npy        (N,) str: the images' ids, in the unlabeled split's order
  shard-00000.values.npy     (N, C), or (N, k) with top-k: float16
  shard-00000.indices.npy    (N, k) class indices, top-k only: int16 up to 32767 classes, else int32

Values are log-softmax outputs, i.e. logits shifted per row so that logsumexp = 0. Softmax and
temperature scaling give exactly what the raw logits give, and with top-k storage the top
probability (the confidence used for filtering) stays exact. Top-k rows are in descending order (a
row's top is its first value). Plain .npy files: local shards are memory-mapped, with no decoding and
no copy, and a reader pays only for the columns it opens.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from selftrain import artifacts
from selftrain.parallel import ordered_map

if TYPE_CHECKING:  # the writer takes the model's tensors; readers give numpy, so filter-balance runs without torch
    import torch

FORMAT = "selftrain-logits/2"


class LogitStoreError(ValueError):
    """A logit store is malformed, holds non-finite values, or belongs to another teacher or data set."""


class LogitWriter:
    """Stream logits into shards under `uri` (an artifact staging directory); `close()` writes the header."""

    def __init__(
        self, uri: str, num_classes: int, topk: int | None, shard_size: int, teacher_sha256: str, unlabeled_sha256: str
    ):
        if topk is not None and topk > num_classes:
            raise LogitStoreError(f"infer.topk = {topk} exceeds the {num_classes} classes")
        self.uri = uri
        self.num_classes = num_classes
        self.topk = topk
        self.shard_size = shard_size
        self.header: dict[str, Any] = {
            "format": FORMAT,
            "values": "log_softmax",
            "dtype": "float16",
            "num_classes": num_classes,
            "k": topk,
            "teacher_sha256": teacher_sha256,
            "unlabeled_sha256": unlabeled_sha256,
            "count": 0,
            "shards": [],
        }
        self._index_dtype = np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32
        self._pending: list[dict[str, np.ndarray]] = []  # batches already in stored form: a shard waits in its own size
        self._pending_rows = 0

    def add(self, ids: np.ndarray, logits: torch.Tensor) -> None:
        bad = ~logits.isfinite().all(dim=1)
        if bad.any():
            raise LogitStoreError(
                f"the model produced non-finite logits for {int(bad.sum())} image(s), first "
                f"'{ids[int(bad.nonzero()[0])]}'"
            )
        lp = logits.float().log_softmax(dim=1)
        batch = {"ids": np.asarray(ids).astype(str)}
        if self.topk is None:
            batch["values"] = lp.half().numpy()
        else:
            values, indices = lp.topk(self.topk, dim=1, sorted=True)
            # int16 class indices when the classes fit: half the bytes of int32
            batch["values"], batch["indices"] = values.half().numpy(), indices.numpy().astype(self._index_dtype)
        self._pending.append(batch)
        self._pending_rows += len(ids)
        while self._pending_rows >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, rows: int) -> None:
        pending = {c: np.concatenate([b[c] for b in self._pending]) for c in self._pending[0]}
        name = f"shard-{len(self.header['shards']):05d}"
        for column, a in pending.items():
            artifacts.save_array(artifacts.join(self.uri, f"{name}.{column}.npy"), a[:rows])
        self.header["shards"].append({"name": name, "rows": rows})
        self.header["count"] += rows
        self._pending = [{c: a[rows:] for c, a in pending.items()}] if rows < self._pending_rows else []
        self._pending_rows -= rows

    def close(self) -> dict[str, Any]:
        if self._pending_rows:
            self._flush(self._pending_rows)
        artifacts.write_json(artifacts.join(self.uri, "header.json"), self.header)
        return self.header


@dataclass(frozen=True)
class StoredLogits:
    ids: np.ndarray | None  # None when read without them
    values: np.ndarray  # float16 (N, C), or (N, k) each row in descending order
    indices: np.ndarray | None  # int16 or int32 (N, k) for top-k stores
    header: dict[str, Any]

    def dense_log_probs(self) -> np.ndarray:
        """float64 (N, C) log-probabilities; classes outside a top-k store get -inf."""
        v = self.values.astype(np.float64)
        if self.indices is None:
            return v
        dense = np.full((len(v), self.header["num_classes"]), -np.inf)
        np.put_along_axis(dense, self.indices.astype(np.int64), v, axis=1)
        return dense


def open_store(uri: str, teacher_sha256: str | None = None, unlabeled_sha256: str | None = None) -> dict[str, Any]:
    """The header of a complete store, refusing one that is partial, malformed or from another teacher/data set."""
    if not artifacts.exists(uri) and artifacts.exists(f"{uri.rstrip('/')}.parts"):
        raise LogitStoreError(
            f"logit store '{uri}' exists only as parts ({uri.rstrip('/')}.parts): a partial set is never used; "
            "run infer without --part to infer what is missing and join them"
        )
    artifacts.require_complete(uri)
    header = artifacts.read_json(artifacts.join(uri, "header.json"))
    if header.get("format") != FORMAT:
        raise LogitStoreError(f"'{uri}' is not a {FORMAT} store (format: {header.get('format')!r}): rerun infer")
    for key, expected in (("teacher_sha256", teacher_sha256), ("unlabeled_sha256", unlabeled_sha256)):
        if expected is not None and header[key] != expected:
            raise LogitStoreError(
                f"'{uri}' was made with {key} {header[key][:12]}…, expected {expected[:12]}…: rerun infer"
            )
    if not header["shards"]:
        raise LogitStoreError(f"logit store '{uri}' is empty: the unlabeled set had no images")
    return header


def _columns(header: dict[str, Any]) -> tuple[str, ...]:
    return ("ids", "values", "indices") if header["k"] else ("ids", "values")


def _non_finite(values: np.ndarray) -> np.ndarray:
    """Rows holding NaN or ±inf. float16 by its bits (exponent all ones): several times faster than np.isfinite."""
    bad = (values.view(np.uint16) & 0x7C00) == 0x7C00 if values.dtype == np.float16 else ~np.isfinite(values)
    return bad.any(axis=1) if bad.any() else np.zeros(len(values), bool)  # a whole-array any() is 10x a per-row one


def iter_shards(uri: str, header: dict[str, Any], with_ids: bool = True) -> Iterator[tuple[int, StoredLogits]]:
    """(first row, its rows) shard by shard: a store of any size in the memory of a few shards. Local shards are
    memory-mapped (only the pages touched are read; the next shard's files are prefetched); remote ones are
    fetched a few ahead on threads. Without ids, their files are not opened (ids is None)."""
    width = header["k"] or header["num_classes"]
    columns = [c for c in _columns(header) if with_ids or c != "ids"]
    names = [artifacts.join(uri, shard["name"]) for shard in header["shards"]]
    local = artifacts.is_local(uri)

    def load(i: int) -> StoredLogits:
        name, shard = names[i], header["shards"][i]
        for c in columns if local and i + 1 < len(names) else ():
            artifacts.prefetch(f"{names[i + 1]}.{c}.npy")
        part = {c: artifacts.load_array(f"{name}.{c}.npy") for c in columns}
        ids, values, indices = part.get("ids"), part["values"], part.get("indices")
        if (
            values.ndim != 2
            or values.shape[1] != width
            or len(values) != shard["rows"]
            or (ids is not None and len(ids) != len(values))
            or (indices is not None and indices.shape != values.shape)
        ):
            raise LogitStoreError(
                f"'{name}.values.npy' holds values of shape "
                f"{values.shape}{f' for {len(ids)} ids' if ids is not None else ''}"
                f"{f' and indices of shape {indices.shape}' if indices is not None else ''}; "
                f"the header expects ({shard['rows']}, {width}): rerun infer"
            )
        bad = _non_finite(values)
        if bad.any():
            first = (ids if ids is not None else artifacts.load_array(f"{name}.ids.npy"))[np.argmax(bad)]
            raise LogitStoreError(
                f"'{name}.values.npy' holds NaN/inf logits for {int(bad.sum())} image(s), first '{first}'"
            )
        return StoredLogits(ids, values, indices, header)

    start = 0
    for part in ordered_map(load, range(len(names)), workers=2 if local else 4):
        yield start, part
        start += len(part.values)
    if start != header["count"]:
        raise LogitStoreError(f"'{uri}' header says {header['count']} rows, shards hold {start}")


def read_store(uri: str, teacher_sha256: str | None = None, unlabeled_sha256: str | None = None) -> StoredLogits:
    """Read a whole store into memory (see open_store for what is refused)."""
    header = open_store(uri, teacher_sha256, unlabeled_sha256)
    parts = [p for _, p in iter_shards(uri, header)]
    ids = np.concatenate([p.ids for p in parts])
    values = np.concatenate([p.values for p in parts])
    indices = np.concatenate([p.indices for p in parts]) if header["k"] else None
    return StoredLogits(ids, values, indices, header)


def part_uri(uri: str, part: int, parts: int) -> str:
    """Where part `part` of `parts` of the store at `uri` is written: an ordinary store in `uri`.parts/."""
    return artifacts.join(f"{uri.rstrip('/')}.parts", f"part-{part:05d}-of-{parts:05d}")


def part_rows(count: int, part: int, parts: int) -> slice:
    """The unlabeled rows of one part: `parts` contiguous, near-equal ranges in the split's order."""
    if not 0 <= part < parts:
        raise ValueError(f"part {part} is out of range: infer.parts = {parts} (parts are 0..{parts - 1})")
    return slice(part * count // parts, (part + 1) * count // parts)


def part_done(uri: str, teacher_sha256: str, unlabeled_sha256: str) -> bool:
    """A part is there, complete, and made by this teacher on this unlabeled set."""
    try:
        artifacts.require_complete(uri)
        header = artifacts.read_json(artifacts.join(uri, "header.json"))
    except artifacts.ArtifactError:
        return False
    return header.get("teacher_sha256") == teacher_sha256 and header.get("unlabeled_sha256") == unlabeled_sha256


def merge_parts(uri: str, parts: int, teacher_sha256: str, unlabeled_sha256: str) -> dict[str, Any]:
    """Join the `parts` parts into one store at `uri` (written atomically), then remove the parts.

    Refuses a partial set: every part must be complete and from this teacher and unlabeled set."""
    uris = [part_uri(uri, i, parts) for i in range(parts)]
    missing = [i for i, u in enumerate(uris) if not part_done(u, teacher_sha256, unlabeled_sha256)]
    if missing:
        raise LogitStoreError(
            f"logit store '{uri}': {len(missing)} of {parts} parts are missing, incomplete or from another teacher "
            f"(parts {', '.join(map(str, missing[:20]))}{' ...' if len(missing) > 20 else ''}): run infer for them "
            f"(selftrain infer ... --part N); a partial store is never used"
        )
    headers = [artifacts.read_json(artifacts.join(u, "header.json")) for u in uris]
    merged = {**headers[0], "count": sum(h["count"] for h in headers), "shards": []}
    for h in headers:
        if (h["num_classes"], h["k"]) != (merged["num_classes"], merged["k"]):
            raise LogitStoreError(
                f"logit store '{uri}': parts disagree on classes or k ({h['num_classes']}, {h['k']}): rerun infer"
            )
    with artifacts.atomic_dir(uri) as staging:
        for u, h in zip(uris, headers):
            for shard in h["shards"]:
                name = f"shard-{len(merged['shards']):05d}"
                for c in _columns(h):
                    artifacts.copy(
                        artifacts.join(u, f"{shard['name']}.{c}.npy"), artifacts.join(staging, f"{name}.{c}.npy")
                    )
                merged["shards"].append({"name": name, "rows": shard["rows"]})
        artifacts.write_json(artifacts.join(staging, "header.json"), merged)
    artifacts.remove(f"{uri.rstrip('/')}.parts")
    return merged
