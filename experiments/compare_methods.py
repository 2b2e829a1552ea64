"""Every method side by side at equal wall clock, per seed, on the same split and teacher.

Per seed: prepare, the supervised teacher, the robustness sets and reference (all from params.yaml, its overlays and
--set overrides), then
  1. noisy_student: three generations (infer, filter-balance, train-student; each student the next teacher, no
     gate) as params.yaml has them, with student.epochs x --budget-factor; the wall time of the default three
     (factor 1) is the budget B of this seed, and every other method gets factor x B;
  2. the step-based methods (fixmatch and its thresholds, mpl, reduced_mpl): a short calibration run gives each
     one's steps/s, then its steps are set to fill the budget;
  3. noisy_student_consistency (_all): three generations with student.consistency=dropped (all), student.epochs set
     from a one-epoch calibration of its first generation so that the three fill the budget;
  4. noisy_student_growing (--growing): three generations growing resnet10t -> resnet18 -> resnet26, from scratch,
     at the default epochs: its cost is measured, not fitted to the budget.
Each final model is evaluated like a generation (test top-1, mCE, -A top-1, against the seed's teacher). Raw
results go to --out (appended per seed and method, so a killed run picks up where it stopped), the table to
stdout, with the wall time each method took.

    python -m experiments.compare_methods --seeds 0 1 2 --out runs/methods.json                       # today's budget
    python -m experiments.compare_methods --seeds 0 1 2 --budget-factor 2 --out runs/methods-2x.json  # twice it
    python -m experiments.compare_methods --seeds 0 --set data.unlabeled=4000 --out runs/pilot.json   # a smaller pilot
    python -m experiments.compare_methods --show runs/seed0.json runs/seed1.json  # one table of separate runs
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from experiments import run_args
from experiments.seed import Seed

# each step-based recipe and each consistency variant of Noisy Student: experiments/overlays/<name>.yaml
STEP_METHODS = {
    name: run_args.overlay(name)
    for name in ("fixmatch", "flexmatch", "freematch", "freematch_da", "mpl", "reduced_mpl")
}
CONSISTENCY = {name: run_args.overlay(name) for name in ("noisy_student_consistency", "noisy_student_consistency_all")}
ORDER = ["teacher", "noisy_student", *STEP_METHODS, *CONSISTENCY, "noisy_student_growing"]


def run_seed(s: Seed, row: dict[str, Any], factor: float, methods: list[str], save: Any) -> None:
    row.setdefault("teacher", s.prepare())
    epochs = s.params().student.epochs
    if "budget_s" not in row:  # the default three generations: this seed's budget
        model, row["budget_s"], _ = s.chain("noisy_student-default")
        if factor == 1:
            row["noisy_student"] = {**s.evaluate(model, "noisy_student"), "wall_s": row["budget_s"], "epochs": epochs}
        save()
    budget = factor * row["budget_s"]
    if "noisy_student" in methods and "noisy_student" not in row:
        model, wall, _ = s.chain("noisy_student", **{"student.epochs": round(factor * epochs)})
        row["noisy_student"] = {**s.evaluate(model, "noisy_student"), "wall_s": wall, "epochs": round(factor * epochs)}
        save()
    for name in STEP_METHODS:
        if name in methods and name not in row:
            row[name] = s.step_method(name, budget)
            save()
    for name, c in CONSISTENCY.items():
        if name in methods and name not in row:
            _, t_infer, (t_epoch,) = s.chain(f"{name}-calibration", 1, **c, **{"student.epochs": 1})
            fitted = max(1, int((budget / 3 - (t_infer - t_epoch)) / t_epoch))
            model, wall, _ = s.chain(name, **c, **{"student.epochs": fitted})
            row[name] = {**s.evaluate(model, name), "wall_s": wall, "epochs": fitted}
            save()
    if "noisy_student_growing" in methods and "noisy_student_growing" not in row:
        model, wall, each = s.chain(
            "noisy_student_growing", models=["resnet10t", "resnet18", "resnet26"], **{"student.init": "scratch"}
        )
        row["noisy_student_growing"] = {
            **s.evaluate(model, "noisy_student_growing"),
            "wall_s": wall,
            "student_wall_s": each,
        }
        save()


def _stats(values: list[float], scale: float = 100) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * statistics.fmean(values):.2f} ± {scale * sd:.2f}"


def table(results: dict[str, Any]) -> str:
    rows = list(results.values())
    lines = [
        "| method | test top-1 % | paired gain over noisy_student | mCE | -A top-1 % | wall s (mean) | seeds | per "
        "seed test top-1 |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name in ORDER:
        done = [r[name] for r in rows if name in r]
        if not done:
            continue
        top1 = [m["test_top1"] for m in done]
        gain = [
            r[name]["test_top1"] - r["noisy_student"]["test_top1"] for r in rows if name in r and "noisy_student" in r
        ]
        mce = [m["mCE"] for m in done if m["mCE"] is not None]
        hard = [m["hard_top1"] for m in done if m["hard_top1"] is not None]
        wall = statistics.fmean(m["wall_s"] for m in done) if "wall_s" in done[0] else 0.0
        lines.append(
            f"| {name} | {_stats(top1)} | {_stats(gain) if gain else '-'} | {_stats(mce, 1) if mce else '-'} | "
            f"{_stats(hard) if hard else '-'} | {wall:.0f} | {len(done)} | "
            f"{', '.join(f'{100 * a:.2f}' for a in top1)} |"
        )
    budgets = [r["budget_s"] for r in rows if "budget_s" in r]
    return "\n".join(lines) + (
        f"\n\nbudget (noisy_student x3 at the default epochs): {statistics.fmean(budgets):.0f} s a seed"
        if budgets
        else ""
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run_args.add_params(ap)
    ap.add_argument(
        "--budget-factor",
        type=float,
        default=1.0,
        help="every method gets this times the default three generations' wall time",
    )
    ap.add_argument("--methods", nargs="+", default=[m for m in ORDER if m != "teacher"], choices=ORDER[1:])
    ap.add_argument(
        "--growing", action="store_true", help="also noisy_student_growing (resnet10t -> resnet18 -> resnet26)"
    )
    ap.add_argument("--work", default="runs/methods", help="artifacts of every run (default: %(default)s)")
    ap.add_argument("--out", default="methods.json", help="raw results (default: %(default)s)")
    ap.add_argument(
        "--show", nargs="+", metavar="JSON", help="run nothing: print the table of these raw results (seeds merged)"
    )
    args = ap.parse_args()
    if args.show:
        print(table({seed: row for path in args.show for seed, row in json.loads(Path(path).read_text()).items()}))
        return
    overrides = run_args.overrides(args)
    methods = [m for m in args.methods if m != "noisy_student_growing" or args.growing]
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for seed in args.seeds:
        row = results.setdefault(str(seed), {})
        run_seed(
            Seed(seed, Path(args.work), args.params, overrides),
            row,
            args.budget_factor,
            methods,
            lambda: out.write_text(json.dumps(results, indent=1)),
        )
        out.write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
