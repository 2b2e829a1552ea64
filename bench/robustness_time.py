"""Time to build the robustness sets and to evaluate one model on them, relative to one clean evaluation.

Run from the project root after `make run` (it needs a trained teacher):

    python -m bench.robustness_time --model artifacts/gen0/teacher/model.safetensors

A clean evaluation is what `evaluate` does per model without robustness sets: top-1/top-5 on val
and test. Each timing is the median of --repeats runs in this process, so the ratios compare
like with like on whatever machine runs it (CPU here; pass --device cuda on a GPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from selftrain import models, runtime, stages
from selftrain.accuracy import accuracy
from selftrain.data import load_split
from selftrain.params import load_params
from selftrain.robustness import evaluation as robustness


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", default="artifacts/gen0/teacher/model.safetensors", help="a trained checkpoint")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="robustness_time.json")
    args = ap.parse_args()
    params = load_params(args.params, {"runtime.device": args.device})
    device = runtime.pick_device(args.device)
    net, _ = models.load_checkpoint(args.model)
    net = runtime.place(net, device)
    bs = params.evaluate.batch_size
    with tempfile.TemporaryDirectory() as tmp:
        data, sets, ref = f"{tmp}/data", f"{tmp}/sets", f"{tmp}/ref"
        stages.prepare.run(params, out=data)
        val, test = load_split(data, "val"), load_split(data, "test")
        clean = _median_seconds(lambda: (accuracy(net, val, bs, device), accuracy(net, test, bs, device)), args.repeats)
        build = _median_seconds(lambda: stages.make_robustness_sets.run(params, data=data, out=sets), args.repeats)
        reference = _median_seconds(
            lambda: stages.robustness_reference.run(params, data=data, sets=sets, reference_model=args.model, out=ref),
            args.repeats,
        )
        corrupted, sequences = robustness.load_sets(sets)
        evaluate = _median_seconds(
            lambda: robustness.measure(net, corrupted, sequences, None, bs, device), args.repeats
        )
        n_images = len(val) + len(test)
        n_robust = sum(corrupted[k].shape[0] * corrupted[k].shape[1] for k in corrupted if corrupted[k].ndim == 5)
        n_robust += len(corrupted["clean"]) + sum(
            sequences[k].shape[0] * sequences[k].shape[1] for k in sequences if sequences[k].ndim == 5
        )
    result = {
        "device": str(device),
        "clean_eval_s": clean,
        "clean_images": n_images,
        "build_sets_s": build,
        "reference_s": reference,
        "robust_eval_s": evaluate,
        "robust_images": n_robust,
        "build_over_clean": build / clean,
        "reference_over_clean": reference / clean,
        "robust_eval_over_clean": evaluate / clean,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print("| step | seconds | × one clean evaluation |\n|---|---:|---:|")
    print(f"| clean evaluation of one model (val + test, {n_images} images) | {clean:.1f} | 1.0 |")
    print(f"| make-robustness-sets (-C + -P) | {build:.1f} | {build / clean:.1f} |")
    print(f"| robustness-reference (-A filter + reference's -C/-P) | {reference:.1f} | {reference / clean:.1f} |")
    print(f"| -C + -P evaluation of one model ({n_robust} images) | {evaluate:.1f} | {evaluate / clean:.1f} |")


if __name__ == "__main__":
    main()
