"""What the stage families share about files: the checkpoint's name, log.csv, an input's file hash."""

from __future__ import annotations

import csv
import io
from typing import Any

from selftrain import artifacts

CHECKPOINT = "model.safetensors"


def write_log_csv(uri: str, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    artifacts.write_bytes(uri, buf.getvalue().encode())


def file_hash_in(artifact: str, name: str) -> str:
    """The content hash of file `name` in a complete artifact directory (its manifest's entry)."""
    return artifacts.require_complete(artifact)["files"][name]
