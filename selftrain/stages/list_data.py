"""list-data: the input data's fingerprint, from file listings."""

from __future__ import annotations

from typing import Any

from selftrain import artifacts
from selftrain.data.splits import listing as list_input
from selftrain.params import Params


def run(params: Params, *, out: str) -> dict[str, Any]:
    """Fingerprint the input data from file listings (no image is read): per folder the images' count, bytes and a
    hash of their paths, sizes and mtimes (ETags on S3). DVC runs it on every `dvc repro` (always_changed) and
    reruns `prepare` only when it changed; the Prefect flow keys `prepare`'s cache by it."""
    found = list_input(params.data)
    artifacts.write_json(out, found)
    return found
