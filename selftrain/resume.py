"""Resumable training state: what a training stage checkpoints every N steps so that a run killed at any
point (a preempted pod, kill -9) and started again in a new process continues where it was.

A resume file is torch.save'd plain tensors, numbers and lists, loaded with weights_only=True (no
pickle of code), written atomically to the artifact store (S3 in a cluster) beside the stage's output
(`OUT.resume` by default) and removed when the stage has written its output. It carries a fingerprint
of the run (params, inputs, seed): a file of another run is ignored, not resumed. With the RNG states
it holds, a resumed run takes exactly the steps an uninterrupted one takes: bitwise the same on CPU.

A checkpoint that is there but cannot be read is never taken for "no checkpoint": starting from step 0 would
overwrite it at the next save, throwing away days of training over a network blip. Transient read errors are
retried, then raised (the stage exits with failures.EXIT_TRANSIENT and its runner tries again later); a file
whose bytes arrive but do not load fails the stage, naming it, and stays where it is.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import torch

from selftrain import artifacts, failures, noise

log = logging.getLogger("selftrain")

# /4: each model, optimiser and schedule under its name (steps/base.py), the current GPU's RNG only; older files
# are not resumed
FORMAT = "selftrain-resume/4"
READ_ATTEMPTS, READ_BACKOFF_S = 4, 2.0  # retries of a transient read error: 2, 4, 8 s apart


def rng_state() -> dict[str, Any]:
    """torch's (dropout, stochastic depth), this process's GPU's and the augmentations' random states. Only the
    current GPU's: a process draws on its own GPU alone, and a resume may land on a node with fewer GPUs or on
    another local GPU (restoring every visible GPU's states failed on the first and set the wrong stream on the
    second)."""
    return {
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "augment_rng": noise.augmentation_state(),
    }


def set_rng_state(blob: dict[str, Any]) -> None:
    torch.set_rng_state(blob["torch_rng"])
    if blob["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(blob["cuda_rng"])  # the current device's
    noise.set_augmentation_state(blob["augment_rng"])


def save(uri: str, fingerprint: str, step: int, state: dict[str, Any]) -> None:
    """Write the state of a run at `step` (model and optimiser state dicts, log rows, ...) plus the RNG states."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "fingerprint": fingerprint, "step": step, **rng_state(), **state}, buf)
    artifacts.write_bytes(uri, buf.getvalue())


def load(uri: str, fingerprint: str, what: str) -> dict[str, Any] | None:
    """The state saved at `uri` by this run (same fingerprint), or None: no file, or another run's. Raises when a
    file is there that cannot be read (see the module's docstring): a transient error after READ_ATTEMPTS tries,
    artifacts.ArtifactError when its content does not load."""
    data = _read(uri, what)
    if data is None:
        return None
    try:
        blob = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:  # torch's own message goes on to suggest weights_only=False: keep its first line
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise artifacts.ArtifactError(
            f"the {what} checkpoint '{uri}' is there but does not load ({type(e).__name__}: {first_line}); it was "
            "left as it is. "
            "Restore it, or delete it to start this stage from step 0"
        ) from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or blob.get("fingerprint") != fingerprint:
        log.warning(
            "ignoring %s checkpoint '%s': it belongs to another run (params or inputs differ); starting from step 0",
            what,
            uri,
        )
        return None
    return blob


def _read(uri: str, what: str) -> bytes | None:
    """The checkpoint's bytes, None when there is none; transient errors are retried with backoff, then raised."""
    attempt = 1
    while True:
        try:
            return artifacts.read_bytes(uri) if artifacts.exists(uri) else None
        except artifacts.ArtifactError:  # gone between the two calls: removed by a finishing run
            return None
        except Exception as e:
            if not failures.is_transient(e) or attempt == READ_ATTEMPTS:
                raise
            wait = READ_BACKOFF_S * 2 ** (attempt - 1)
            log.warning(
                "could not read the %s checkpoint '%s' (%s: %s); trying again in %.0f s",
                what,
                uri,
                type(e).__name__,
                e,
                wait,
            )
            time.sleep(wait)
            attempt += 1
