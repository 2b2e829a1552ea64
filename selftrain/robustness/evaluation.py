"""The robustness sets as arrays, a model's raw results on them, and those results normalised by a reference.

-C: `corruption_images` test images under every corruption and severity. -P: `perturbation_images`
test images as one sequence per perturbation. -A: the hard set (hard_set.py), built by the
robustness-reference stage because it depends on the reference model.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from selftrain import artifacts
from selftrain.data import Split
from selftrain.params import RobustnessParams
from selftrain.predict import predict_logits
from selftrain.robustness import metrics as rm
from selftrain.robustness.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from selftrain.robustness.perturbations import PERTURBATIONS, perturbation_sequences

log = logging.getLogger("selftrain")


def build_corruptions(test: Split, p: RobustnessParams, seed: int) -> dict[str, np.ndarray]:
    """Arrays of the -C set: rows/labels/clean of the chosen test images, and per corruption (5, N, H, W, C)."""
    rows = _choose(len(test), p.corruption_images, seed, 0)
    clean = test.images[rows]
    arrays = {"rows": rows, "labels": test.labels[rows], "clean": clean}
    for name in tqdm(CORRUPTIONS, desc="-C set", unit="corruption", mininterval=2.0):
        arrays[name] = np.stack([corrupt(clean, name, s, seed) for s in SEVERITIES])
    return arrays


def build_perturbations(test: Split, p: RobustnessParams, seed: int) -> dict[str, np.ndarray]:
    """Arrays of the -P set: rows/labels of the chosen test images, and per perturbation (M, frames, H, W, C)."""
    rows = _choose(len(test), p.perturbation_images, seed, 1)
    arrays = {"rows": rows, "labels": test.labels[rows]}
    for name in tqdm(PERTURBATIONS, desc="-P set", unit="perturbation", mininterval=2.0):
        arrays[name] = perturbation_sequences(test.images[rows], name, p.frames, seed)
    return arrays


def load_sets(uri: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(-C arrays, -P arrays) of a make-robustness-sets output."""
    artifacts.require_complete(uri)
    return artifacts.load_array_files(artifacts.join(uri, "corruptions")), artifacts.load_array_files(
        artifacts.join(uri, "perturbations")
    )


def _choose(n: int, size: int, seed: int, stream: int) -> np.ndarray:
    if size >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 300 + stream]).choice(n, size=size, replace=False))


def measure(
    model: nn.Module,
    corruptions: dict[str, np.ndarray],
    perturbations: dict[str, np.ndarray],
    hard: Split | None,
    batch_size: int,
    device: torch.device,
    desc: str = "robustness",
) -> dict[str, Any]:
    """A model's unnormalised results: clean and per corruption x severity error, per perturbation FP (and T5D
    where there are more than 5 classes), and -A top-1 when there is a hard set."""

    def predict(images: np.ndarray) -> torch.Tensor:
        return predict_logits(model, images.reshape(-1, *images.shape[-3:]), batch_size, device)

    labels = corruptions["labels"]
    raw: dict[str, Any] = {"clean_error": _error(predict(corruptions["clean"]), labels), "corruption_errors": {}}
    for name in tqdm(CORRUPTIONS, desc=f"{desc} -C", unit="corruption", mininterval=2.0):
        logits = predict(corruptions[name]).view(len(SEVERITIES), len(labels), -1)
        raw["corruption_errors"][name] = [_error(logits[s], labels) for s in range(len(SEVERITIES))]
    raw["flip_probability"], raw["top5_distance"] = {}, {}
    for name in tqdm(PERTURBATIONS, desc=f"{desc} -P", unit="perturbation", mininterval=2.0):
        seqs = perturbations[name]
        logits = predict(seqs).view(seqs.shape[0], seqs.shape[1], -1)
        noise = name in rm.NOISE_SEQUENCES
        raw["flip_probability"][name] = rm.flip_probability(logits.argmax(-1).numpy(), noise)
        if logits.shape[-1] > 5:
            raw["top5_distance"][name] = rm.top5_distance(logits.topk(5, dim=-1).indices.numpy(), noise)
    if hard is not None:
        raw["hard_top1"] = 1 - _error(predict(hard.images), hard.labels)
    return raw


def _error(logits: torch.Tensor, labels: np.ndarray) -> float:
    return float((logits.argmax(1).numpy() != labels).mean())


def summarize(raw: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    """Headline figures of `raw` normalised by the reference's raw results `ref` (-C's CE, relative CE and FR)."""
    ce = rm.corruption_errors(raw["corruption_errors"], ref["corruption_errors"])
    rel = rm.relative_corruption_errors(
        raw["corruption_errors"], raw["clean_error"], ref["corruption_errors"], ref["clean_error"]
    )
    fp, ref_fp = raw["flip_probability"], ref["flip_probability"]
    fr = {k: (fp[k] / ref_fp[k] if ref_fp[k] > 0 else float("nan")) for k in fp}
    # a reference with no error (CE) or no flip (FR) on a kind leaves nothing to normalise by: the means skip it,
    # and the summary names it (the report and the log say so) rather than quietly averaging fewer kinds
    left_out = {
        key: names
        for key, names in (("mCE", rm.undefined(ce)), ("relative_mCE", rm.undefined(rel)), ("mFR", rm.undefined(fr)))
        if names
    }
    for key, names in left_out.items():
        log.warning(
            "%s leaves out %s: the robustness reference made no %s there, so it is undefined (a larger -C/-P set, "
            "or a reference that is not perfect there, gives a %s over every kind)",
            key,
            ", ".join(names),
            "flip" if key == "mFR" else "error",
            key,
        )
    out = {
        "mCE": rm.mean(ce),
        "relative_mCE": rm.mean(rel),
        "mean_corruption_error": float(np.mean([e for errs in raw["corruption_errors"].values() for e in errs])),
        "mFR": rm.mean(fr),
        "mFP": rm.mean(fp),
        **({"mT5D": rm.mean(raw["top5_distance"])} if raw["top5_distance"] else {}),
        **({"hard_top1": raw["hard_top1"]} if "hard_top1" in raw else {}),
    }
    return {
        "headline": out,
        "corruption_error": ce,
        "relative_corruption_error": rel,
        "flip_rate": fr,
        "left_out": left_out,
        "raw": raw,
    }
