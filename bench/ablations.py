"""Noisy Student ablations as DVC experiments: the full method vs one part removed, generation 1, same seeds.

Run from a DVC repository of this project (a clone where `make run` has run, so the teacher is in
DVC's run cache). Each variant x seed is one `dvc exp run -S ... evaluate@gen1`; all variants
train for the same number of steps. Prints a markdown table (mean ± std over seeds):

    python bench/ablations.py --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

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
    cmd = ["dvc", "exp", "run", "-n", exp, "-S", f"seed={seed}"] + [a for s in sets for a in ("-S", s)] + ["evaluate@gen1"]
    # `dvc exp run` leaves its -S changes in the workspace params.yaml: start each run from the committed one
    subprocess.run(["git", "checkout", "--", "params.yaml"], check=True)
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=ENV)
    return json.loads(Path("artifacts/gen1/metrics.json").read_text())


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
                results[key] = {"teacher": m["teacher"]["test_top1"], "student": m["student"]["test_top1"]}
                out.write_text(json.dumps(results, indent=1))
    print("| variant | student test top-1 | gain over teacher | seeds |\n|---|---:|---:|---|")
    for name in args.variants:
        rows = [results[f"{name}|{s}"] for s in args.seeds if f"{name}|{s}" in results]
        acc = [100 * r["student"] for r in rows]
        gain = [100 * (r["student"] - r["teacher"]) for r in rows]
        sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0  # noqa: E731
        print(f"| {name} | {statistics.mean(acc):.2f} ± {sd(acc):.2f} % | {statistics.mean(gain):+.2f} ± {sd(gain):.2f} | {len(rows)} |")


if __name__ == "__main__":
    main()
