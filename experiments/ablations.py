"""Noisy Student ablations as DVC experiments: the full method vs one part removed, generation 1, same seeds.

Run from a DVC repository of this project (a clone where `make run` has run, so the teacher is in
DVC's run cache). Each variant x seed is one `dvc exp run -S ... train-student@gen1`; all variants
train for the same number of steps. Teacher and student are then scored on the test split with
`selftrain.accuracy.accuracy` (evaluate's clean top-1, without its ~1 min of robustness sets per
run). Prints a markdown table (mean ± std over seeds):

    python -m experiments.ablations --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from selftrain import models, promoted
from selftrain.accuracy import accuracy
from selftrain.data import load_split

# dvc and the stages' `selftrain` from this interpreter's environment, activated or not
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

VARIANTS = {
    "full method": [],
    "no noise": ["student.augment=s1", "student.drop_rate=0", "student.drop_path_rate=0"],
    "hard labels": ["pseudo_labels.kind=hard"],
    "no balance": ["pseudo_labels.per_class=null"],
    "student from scratch": ["student.init=scratch"],
}


def run_variant(name: str, sets: list[str], seed: int) -> dict:
    exp = f"{name.replace(' ', '-')}-seed{seed}"
    cmd = (
        ["dvc", "exp", "run", "-n", exp, "-S", f"seed={seed}"]
        + [a for s in sets for a in ("-S", s)]
        + ["train-student@gen1"]
    )
    # `dvc exp run` leaves its -S changes in the workspace params.yaml: start each run from the committed one
    subprocess.run(["git", "checkout", "--", "params.yaml"], check=True)
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=ENV)
    wall_s = time.perf_counter() - t0  # the first variant of a seed also trains its teacher
    test = load_split("artifacts/data", "test")
    top1 = {
        role: accuracy(models.load_checkpoint(uri)[0], test, 512, torch.device("cpu"))["top1"]
        for role, uri in (
            ("teacher", promoted.resolve("artifacts/gen0/promoted.json")[0]),
            ("student", "artifacts/gen1/student/model.safetensors"),
        )
    }
    return {**top1, "wall_s": wall_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", default="ablations.json", help="raw results, appended per run (default: %(default)s)")
    args = ap.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for seed in args.seeds:
        for name in args.variants:
            key = f"{name}|{seed}"
            if key not in results:
                m = run_variant(name, VARIANTS[name], seed)
                results[key] = {"teacher": m["teacher"], "student": m["student"], "wall_s": round(m["wall_s"])}
                out.write_text(json.dumps(results, indent=1))
    print("| variant | student test top-1 | gain over teacher | seeds |\n|---|---:|---:|---|")
    for name in args.variants:
        rows = [results[f"{name}|{s}"] for s in args.seeds if f"{name}|{s}" in results]
        acc = [100 * r["student"] for r in rows]
        gain = [100 * (r["student"] - r["teacher"]) for r in rows]
        sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
        print(
            f"| {name} | {statistics.mean(acc):.2f} ± {sd(acc):.2f} % "
            f"| {statistics.mean(gain):+.2f} ± {sd(gain):.2f} "
            f"| {len(rows)} |"
        )


if __name__ == "__main__":
    main()
