"""How the -P noise sequences' clean first frame moves FP and mFR.

Hendrycks' make_cifar_p.py starts every noise sequence with the clean image and -P's FP compares each noisy
frame with it. Before the fix, frame 0 was noisy too, so FP measured noisy-vs-noisy flips. On the -P set of a
make-robustness-sets output (built by the current code: clean frame 0), this scores both ways for each model:
"clean reference" (frames 1.. against clean frame 0, as -P does) and "noisy reference" (frames 2.. against
noisy frame 1, what the old sets measured), and mFR against the robustness reference model.

Run from the project root after `make run`:

    python -m experiments.p_noise_reference_frame --sets artifacts/robustness/sets \\
        --reference artifacts/gen0/promoted.json --model artifacts/gen1/student/model.safetensors
"""

from __future__ import annotations

import argparse

import numpy as np

from selftrain import artifacts, models, promoted, runtime
from selftrain.predict import predict_logits
from selftrain.robustness import metrics as rm
from selftrain.robustness.perturbations import PERTURBATIONS


def flip_probabilities(checkpoint: str, sequences: dict[str, np.ndarray], device) -> dict[str, dict[str, float]]:
    net, _ = models.load_checkpoint(checkpoint)
    net = runtime.place(net, device)
    out: dict[str, dict[str, float]] = {"clean": {}, "noisy": {}}
    for name in PERTURBATIONS:
        seqs = sequences[name]
        preds = (
            predict_logits(net, seqs.reshape(-1, *seqs.shape[-3:]), 512, device)
            .argmax(-1)
            .numpy()
            .reshape(seqs.shape[:2])
        )
        noise = name in rm.NOISE_SEQUENCES
        out["clean"][name] = rm.flip_probability(preds, noise)
        out["noisy"][name] = rm.flip_probability(preds[:, 1:], noise) if noise else out["clean"][name]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", default="artifacts/robustness/sets", help="make-robustness-sets' output")
    ap.add_argument(
        "--reference",
        default="artifacts/gen0/promoted.json",
        help="the robustness reference (promotion record or checkpoint)",
    )
    ap.add_argument("--model", action="append", required=True, help="a checkpoint to score (repeatable)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = runtime.pick_device(args.device)
    artifacts.require_complete(args.sets)
    sequences = artifacts.load_array_files(artifacts.join(args.sets, "perturbations"))
    ref = flip_probabilities(promoted.resolve(args.reference)[0], sequences, device)
    print("| model | reference frame | FP gaussian_noise | FP shot_noise | mFP | mFR (vs reference) |")
    print("|---|---|---:|---:|---:|---:|")
    for label, checkpoint in [("reference", promoted.resolve(args.reference)[0])] + [(m, m) for m in args.model]:
        fp = ref if label == "reference" else flip_probabilities(checkpoint, sequences, device)
        for way in ("noisy", "clean"):
            fr = {k: fp[way][k] / ref[way][k] if ref[way][k] > 0 else float("nan") for k in PERTURBATIONS}
            print(
                f"| {label} | {way} | {100 * fp[way]['gaussian_noise']:.2f} | {100 * fp[way]['shot_noise']:.2f} | "
                f"{100 * rm.mean(fp[way]):.2f} | {100 * rm.mean(fr):.2f} |"
            )


if __name__ == "__main__":
    main()
