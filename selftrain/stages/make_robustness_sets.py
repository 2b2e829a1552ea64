"""make-robustness-sets: the -C/-P sets from the test split."""

from __future__ import annotations

import logging
from typing import Any

from selftrain import artifacts
from selftrain.data import load_split
from selftrain.params import Params
from selftrain.rendering import corruption_grid
from selftrain.robustness import evaluation as robustness

log = logging.getLogger("selftrain")


def run(params: Params, *, data: str, out: str) -> dict[str, Any]:
    """Build the -C set (test images under 15 corruptions x 5 severities) and the -P sequences from the test
    split, deterministic by seed; writes corruptions/ and perturbations/ (one .npz per corruption or perturbation)
    and grid.png (one image under each)."""
    test = load_split(data, "test")
    corrupted = robustness.build_corruptions(test, params.robustness, params.seed)
    sequences = robustness.build_perturbations(test, params.robustness, params.seed)
    summary: dict[str, Any] = {
        "corruption_images": len(corrupted["rows"]),
        "perturbation_images": len(sequences["rows"]),
        "frames": params.robustness.frames,
        "corruptions": [k for k in corrupted if k not in ("rows", "labels", "clean")],
        "perturbations": [k for k in sequences if k not in ("rows", "labels")],
    }
    grid = corruption_grid(corrupted["clean"], {k: corrupted[k] for k in summary["corruptions"]})
    with artifacts.atomic_dir(out) as staging:
        artifacts.save_array_files(artifacts.join(staging, "corruptions"), **corrupted)
        artifacts.save_array_files(artifacts.join(staging, "perturbations"), **sequences)
        artifacts.write_bytes(artifacts.join(staging, "grid.png"), grid)
        artifacts.write_json(artifacts.join(staging, "summary.json"), summary)
    log.info("make-robustness-sets: %s", {k: v for k, v in summary.items() if isinstance(v, int)})
    return summary
