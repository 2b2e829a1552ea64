"""Noisy Student at several `data.unlabeled` sizes: what more unlabeled images buy, and what they cost.

Per size (same seed, so the same labeled, val and test splits and the same teacher): prepare, the teacher, the
robustness sets and reference, then `--generations` Noisy Student generations (infer, filter-balance, train-student at
the params' epochs, each student the next teacher), evaluated like the rows of `experiments/compare_methods.py`. Each
generation's wall time (infer + filter-balance + student) is recorded, so a size's gain can be read against its cost.
Only the holdout pool shrinks when the unlabeled set takes what it held (so -A top-1 is not comparable across sizes;
test top-1 and mCE are: they come from the test split).

    python -m experiments.unlabeled --sizes 4000 20000 44000 --generations 1 --out unlabeled.json
    python -m experiments.unlabeled --show unlabeled.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments import run_args
from experiments.seed import Seed


def run_size(
    seed: Seed,
    generations: int,
    every: Callable[[list[dict[str, Any]]], None] | None = None,
    student_models: list[str] | None = None,
) -> dict[str, Any]:
    """The teacher and `generations` students; with `every`, each generation is scored too and `every` gets the list so
    far."""
    teacher, scored = seed.prepare(), []

    def score(k: int, checkpoint: str) -> None:
        scored.append({"generation": k, **seed.evaluate(checkpoint, f"noisy_student-gen{k}")})
        if every:
            every(scored)

    model, wall, students = seed.chain(
        "noisy_student", generations, models=student_models, after=score if every else None
    )
    if every:  # the last generation is already scored
        last = {k: v for k, v in scored[-1].items() if k != "generation"}
        return {"teacher": teacher, **last, "wall_s": wall, "student_wall_s": students, "generations": scored}
    return {"teacher": teacher, **seed.evaluate(model, "noisy_student"), "wall_s": wall, "student_wall_s": students}


def table(results: dict[str, Any]) -> str:
    lines = [
        "| data.unlabeled | teacher test top-1 % | student test top-1 % | gain | mCE | wall s (generations) | of "
        "which students | each generation % |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for size, r in sorted(((k, v) for k, v in results.items() if k.isdigit()), key=lambda kv: int(kv[0])):
        t, s = 100 * r["teacher"]["test_top1"], 100 * r["test_top1"]
        each = ", ".join(f"{100 * g['test_top1']:.2f}" for g in r.get("generations", []))
        lines.append(
            f"| {size} | {t:.2f} | {s:.2f} | {s - t:+.2f} | {r['mCE']:.3f} | {r['wall_s']:.0f} | "
            f"{sum(r['student_wall_s']):.0f} | {each} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[4000, 20000, 44000], help="data.unlabeled values")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--generations", type=int, default=1)
    ap.add_argument(
        "--student-models",
        nargs="+",
        metavar="MODEL",
        help="each generation's student model (default: generations.gen1.model)",
    )
    ap.add_argument(
        "--every-generation", action="store_true", help="also score every generation's student, saved as each one ends"
    )
    run_args.add(ap, work="runs/unlabeled", out="unlabeled.json")
    args = ap.parse_args()
    if args.show:
        print(table(json.loads(Path(args.show).read_text())))
        return
    overrides, results = run_args.overrides(args), run_args.results(args)
    for size in args.sizes:
        if str(size) not in results:  # a killed run picks up at the next size
            seed = Seed(
                args.seed, Path(args.work) / f"unlabeled{size}", args.params, {**overrides, "data.unlabeled": size}
            )
            # a size's generations so far, saved beside the finished sizes (a killed run keeps them; the
            # resume reruns the size)
            every = (
                (
                    lambda so_far, size=size: run_args.save(
                        args, {**results, "partial": {"size": size, "generations": so_far}}
                    )
                )
                if args.every_generation
                else None
            )
            results[str(size)] = run_size(seed, args.generations, every, args.student_models)
            run_args.save(args, results)
    print(table(results))


if __name__ == "__main__":
    main()
