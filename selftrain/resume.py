"""Resumable training state: what a training stage checkpoints every N steps so that a run killed at any
point (a preempted pod, kill -9) and started again in a new process continues where it was.

A resume file is torch.save'd plain tensors, numbers and lists, loaded with weights_only=True (no
pickle of code), written atomically to the artifact store (S3 in a cluster) beside the stage's output
(`OUT.resume` by default) and removed when the stage has written its output. It carries a fingerprint
of the run (params, inputs, seed): a file of another run is ignored, not resumed. With the RNG states
it holds, a resumed run takes exactly the steps an uninterrupted one takes: bitwise the same on CPU.
"""
from __future__ import annotations

import io
import logging
from typing import Any

import torch

from selftrain import artifacts, noise

log = logging.getLogger("selftrain")

FORMAT = "selftrain-resume/1"


def rng_state() -> dict[str, Any]:
    """torch's (dropout, stochastic depth), CUDA's and the augmentations' random states."""
    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "augment_rng": noise.augmentation_state(),
    }


def set_rng_state(blob: dict[str, Any]) -> None:
    torch.set_rng_state(blob["torch_rng"])
    if blob["cuda_rng"]:
        torch.cuda.set_rng_state_all(blob["cuda_rng"])
    noise.set_augmentation_state(blob["augment_rng"])


def save(uri: str, fingerprint: str, step: int, state: dict[str, Any]) -> None:
    """Write the state of a run at `step` (model and optimiser state dicts, log rows, ...) plus the RNG states."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "fingerprint": fingerprint, "step": step, **rng_state(), **state}, buf)
    artifacts.write_bytes(uri, buf.getvalue())


def load(uri: str, fingerprint: str, what: str) -> dict[str, Any] | None:
    """The state saved at `uri` by this run (same fingerprint), or None: no file, a torn file, another run's."""
    if not artifacts.exists(uri):
        return None
    try:
        blob = torch.load(io.BytesIO(artifacts.read_bytes(uri)), weights_only=True, map_location="cpu")
    except Exception as e:  # a torn or foreign file: start over rather than fail
        log.warning("ignoring unreadable %s checkpoint '%s' (%s): starting from step 0", what, uri, e)
        return None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or blob.get("fingerprint") != fingerprint:
        log.warning("ignoring %s checkpoint '%s': it belongs to another run (params or inputs differ); starting from step 0", what, uri)
        return None
    return blob
