"""Three generations per seed as DVC experiments, summarised as mean ± std per generation.

Run from a DVC repository of this project (e.g. a fresh clone after `make run`, which is seed 0):

    python -m experiments.generations --seeds 0 1 2

Each seed is one `dvc exp run -S seed=N` (the seed also draws the data split); the raw
per-generation test accuracies go to generations.json, the table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from selftrain.params import load_params

# dvc and the stages' `selftrain` from this interpreter's environment, activated or not
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

FIGURES = ("test_top1", "mCE", "mFR", "hard_top1")  # teacher vs student per generation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="generations.json", help="raw results, appended per seed (default: %(default)s)")
    args = ap.parse_args()
    gens = list(load_params("params.yaml").generations)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for seed in args.seeds:
        if str(seed) in results:
            continue
        cmd = ["dvc", "exp", "run", "-n", f"generations-seed{seed}", "-S", f"seed={seed}"]
        # `dvc exp run` leaves its -S changes in the workspace params.yaml: start each run from the committed one
        subprocess.run(["git", "checkout", "--", "params.yaml"], check=True)
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, env=ENV)  # a failed gate stops the chain with a non-zero exit: record what ran
        row = {"gen0": None}
        for g in gens:
            path = Path(f"artifacts/{g}/promoted.json")
            rec = json.loads(path.read_text()) if path.exists() else None
            if rec is None or rec["generation"] != g:
                break
            last = rec["history"][-1]
            row["gen0"] = row["gen0"] or rec["history"][0]["teacher_test_top1"]
            row[g] = {"test_top1": last["student_test_top1"], "passed": rec["passed"]}
            metrics = json.loads(Path(f"artifacts/{g}/metrics.json").read_text())
            row[g].update({role: {k: metrics[role].get(k) for k in FIGURES} for role in ("teacher", "student")})
            if not rec["passed"]:
                break
        results[str(seed)] = row
        out.write_text(json.dumps(results, indent=1))
    print("| model | test top-1 (mean ± std) | per seed | gain over gen0 teacher |\n|---|---:|---|---:|")
    for g in ["gen0"] + gens:
        accs = [100 * (r[g] if g == "gen0" else r[g]["test_top1"]) for r in results.values() if r.get(g)]
        base = [100 * r["gen0"] for r in results.values() if r.get(g)]
        if not accs:
            continue
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        gain = statistics.mean(a - b for a, b in zip(accs, base))
        label = "gen0 (supervised teacher)" if g == "gen0" else f"{g} student"
        print(
            f"| {label} | {statistics.mean(accs):.2f} ± {sd:.2f} % | {', '.join(f'{a:.2f}' for a in accs)} | "
            f"{gain:+.2f} |"
        )
    print(
        "\nTeacher vs student per generation, mean ± std over seeds (x100; mCE, mFR: 100 = the gen0 teacher, lower is "
        "better)\n"
    )
    print("| generation | seeds | " + " | ".join(f"{k} teacher | {k} student" for k in FIGURES) + " |")
    print("|---|---:|" + "---:|" * (2 * len(FIGURES)))
    for g in gens:
        rows = [r[g] for r in results.values() if r.get(g) and "student" in r[g]]
        if not rows:
            continue
        cells = []
        for k in FIGURES:
            for role in ("teacher", "student"):
                vals = [100 * r[role][k] for r in rows if r[role].get(k) is not None]
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                cells.append(f"{statistics.mean(vals):.2f} ± {sd:.2f}" if vals else "–")
        print(f"| {g} | {len(rows)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
