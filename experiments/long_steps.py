"""One step-based method run far past the budget, validated along the way: does it keep climbing?

`experiments/compare_methods.py` gives each step-based method the wall time of Noisy Student's three generations (about
1,500 FixMatch steps at the default scale on one core). USB trains FixMatch and FreeMatch for 2^20 steps. This runs one
method from `experiments/compare_methods.py`'s table for each `--steps` given, with a validation (and a log row) every
`--val-every` steps, on the seed's split and teacher in `--work` (made by `experiments/compare_methods.py`, or made here
the same way), then scores the final model like every other row: test top-1, mCE and -A top-1 against the seed's
teacher. The learning rate decays to 0 at the run's last step, so the validations on the way are points of this
schedule, not of shorter runs. With `--then-noisy-student K`, K Noisy Student generations follow from the run's final
model (params.yaml's student recipe, each student the next teacher), each scored and timed: the `generations` recipe
`gen1: fixmatch`, then `gen2.. : noisy_student`.

    python -m experiments.long_steps --seed 0 --method freematch_da --steps 6000 --work runs/methods --out long.json
    python -m experiments.long_steps --seed 0 --method freematch_da --steps 6000 --then-noisy-student 2 --work
    runs/methods --out long.json
    python -m experiments.long_steps --show long.json
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from experiments import run_args
from experiments.compare_methods import STEP_METHODS
from experiments.seed import Seed
from selftrain import stages


def validations(log: Path) -> tuple[list[int], list[float]]:
    """(step, val top-1) of each log row that has a validation."""
    rows = [r for r in csv.DictReader(log.open()) if r["val_top1"]]
    return [int(r["step"]) for r in rows], [float(r["val_top1"]) for r in rows]


def steps_time(log: Path) -> float:
    """Seconds the run's steps took, summed over its log rows (each row's steps over its steps/s): unlike the wall
    time of the process that finished it, this counts the steps of every process a resumed run went through."""
    total, last = 0.0, 0
    for r in csv.DictReader(log.open()):
        total += (int(r["step"]) - last) / float(r["steps_per_s"])
        last = int(r["step"])
    return total


def table(results: dict[str, dict[str, dict]]) -> str:
    lines = [
        "| seed | method | steps | test top-1 % | mCE | -A top-1 % | wall s | steps' s (resumed at) | val top-1 % "
        "along the run (step: %) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for seed, runs in sorted(results.items()):
        for key, r in runs.items():
            curve = ", ".join(f"{s}: {100 * v:.2f}" for s, v in zip(r["val_steps"], r["val_top1"]))
            steps_s = f"{r['steps_s']:.0f}" if "steps_s" in r else ""  # results from before the field have none
            if r.get("resumed_from_step"):
                steps_s += f" ({r['resumed_from_step']})"
            lines.append(
                f"| {seed} | {r['method']} | {r['steps']} | {100 * r['test_top1']:.2f} | {r['mCE']:.3f} | "
                f"{100 * r['hard_top1']:.1f} | {r['wall_s']:.0f} | {steps_s} | {curve} |"
            )
            for g in r.get("then_noisy_student", []):
                lines.append(
                    f"| {seed} | then Noisy Student gen {g['generation']} | | {100 * g['test_top1']:.2f} | "
                    f"{g['mCE']:.3f} | {100 * g['hard_top1']:.1f} | {g['wall_s']:.0f} | | |"
                )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--method", default="freematch_da", choices=[m for m in STEP_METHODS if m not in ("mpl", "reduced_mpl")]
    )
    ap.add_argument("--steps", type=int, nargs="+", default=[6000], help="one run per value (fixmatch.steps)")
    ap.add_argument(
        "--val-every", type=int, default=500, help="methods.fixmatch.checkpoint_every: a validation every N steps"
    )
    ap.add_argument(
        "--then-noisy-student",
        type=int,
        default=0,
        metavar="K",
        help="K Noisy Student generations from the run's model, each scored",
    )
    run_args.add(ap, work="runs/methods", out="long_steps.json")
    args = ap.parse_args()
    if args.show:
        print(table(json.loads(Path(args.show).read_text())))
        return
    # The stages log their steps, validations and any resume through the `selftrain` logger: with tqdm off (a GPU
    # run's log file), that is all the progress a call stopped by a time limit leaves behind.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    results = run_args.results(args)
    seed = Seed(args.seed, Path(args.work), args.params, run_args.overrides(args))
    seed.prepare()
    runs = results.setdefault(str(args.seed), {})
    for steps in args.steps:
        key = f"{args.method}-{steps}"
        if key not in runs:
            runs[key] = run(seed, args.method, steps, args.val_every)
            run_args.save(args, results)
        if len(runs[key].get("then_noisy_student", [])) < args.then_noisy_student:
            noisy_student_after(seed, key, args.then_noisy_student, runs[key], lambda: run_args.save(args, results))
    print(table(results))


def run(seed: Seed, method: str, steps: int, val_every: int) -> dict:
    """The step-based run for `steps`, scored, with its validations along the way."""
    key = f"{method}-{steps}"
    out = seed.root / key
    p = seed.params(
        **STEP_METHODS[method], **{"methods.fixmatch.steps": steps, "methods.fixmatch.checkpoint_every": val_every}
    )
    t0 = time.perf_counter()
    summary = stages.train_student.run(p, generation="gen1", data=seed.data, teacher=seed.gen0, out=str(out))
    wall = time.perf_counter() - t0
    steps_done, val = validations(out / "log.csv")
    return {
        "method": method,
        "steps": steps,
        **seed.evaluate(str(out / stages.CHECKPOINT), key),
        "wall_s": wall,  # of this process only: a resumed run's earlier steps are in steps_s
        "steps_s": steps_time(out / "log.csv"),
        "resumed_from_step": summary["resumed_from_step"],
        "val_steps": steps_done,
        "val_top1": val,
    }


def noisy_student_after(seed: Seed, key: str, generations: int, row: dict, save: Callable[[], None]) -> None:
    """`generations` Noisy Student generations from run `key`'s model, each scored and timed into
    row["then_noisy_student"], with `save()` after each (a killed run reruns them all)."""
    row["then_noisy_student"] = []
    t0 = time.perf_counter()

    def score(k: int, checkpoint: str) -> None:
        nonlocal t0
        wall = time.perf_counter() - t0
        row["then_noisy_student"].append(
            {"generation": k, **seed.evaluate(checkpoint, f"{key}-then-ns-gen{k}"), "wall_s": wall}
        )
        save()
        t0 = time.perf_counter()

    seed.chain(f"{key}-then-noisy-student", generations, after=score, start=str(seed.root / key / stages.CHECKPOINT))


if __name__ == "__main__":
    main()
