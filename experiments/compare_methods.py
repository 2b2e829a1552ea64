"""Every method side by side at equal wall clock, per seed, on the same split and teacher.

Per seed: prepare, the supervised teacher, the robustness sets and reference (all from params.yaml and its
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments import run_args
from selftrain import stages
from selftrain.params import Params, load_params

PREPARED_FROM = ("seed", "data", "teacher", "robustness")  # the params sections Seed.prepare's artifacts depend on
CALIBRATION_STEPS = 50  # the first steps run slower: too few made the budget estimate short
# each step-based recipe and each consistency variant of Noisy Student: experiments/overlays/<name>.yaml
STEP_METHODS = {
    name: run_args.overlay(name)
    for name in ("fixmatch", "flexmatch", "freematch", "freematch_da", "mpl", "reduced_mpl")
}
CONSISTENCY = {name: run_args.overlay(name) for name in ("noisy_student_consistency", "noisy_student_consistency_all")}
ORDER = ["teacher", "noisy_student", *STEP_METHODS, *CONSISTENCY, "noisy_student_growing"]


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


class Seed:
    """One seed's shared inputs (data, teacher, robustness sets and reference) and how its methods are run."""

    def __init__(self, seed: int, work: Path, params_path: str, overrides: dict[str, Any]) -> None:
        self.root = work / f"seed{seed}"
        self.params_path = params_path
        self.overrides = {**overrides, "seed": seed}
        self.data = str(self.root / "data")
        self.gen0 = str(self.root / "gen0.json")
        self.sets = str(self.root / "sets")
        self.reference = str(self.root / "reference")

    def params(self, **extra: Any) -> Params:
        return load_params(self.params_path, {**self.overrides, **extra})

    def prepare(self) -> dict[str, Any]:
        """The split, teacher, robustness sets and reference, made once per --work; a later run reuses them only if
        they were made with the same params (a silent reuse once scored a 120-epoch teacher as a 240-epoch one)."""
        p = self.params()
        used = {k: v for k, v in p.model_dump(mode="json").items() if k in PREPARED_FROM}
        stamp = self.root / "prepared-with.json"
        if (self.root / "reference").exists():
            before = json.loads(stamp.read_text()) if stamp.exists() else {}
            if before != used:
                changed = ", ".join(_changed_keys(before, used)) if before else "not recorded"
                raise SystemExit(
                    f"{self.root} holds a teacher and robustness sets made with other params ({changed}): pass "
                    "another --work, or delete it"
                )
        else:
            stages.prepare.run(p, out=self.data)
            stages.train_teacher.run(p, data=self.data, out=str(self.root / "teacher"), promoted=self.gen0)
            stages.make_robustness_sets.run(p, data=self.data, out=self.sets)
            stages.robustness_reference.run(
                p, data=self.data, sets=self.sets, reference_model=self.gen0, out=self.reference
            )
            stamp.write_text(json.dumps(used, indent=1))
        return self.evaluate(str(self.root / "teacher" / stages.CHECKPOINT), "teacher", role="teacher")

    def evaluate(self, checkpoint: str, name: str, role: str = "student") -> dict[str, Any]:
        out = str(self.root / f"{name}-metrics.json")
        m = stages.evaluate.run(
            self.params(),
            teacher=self.gen0,
            student=checkpoint,
            data=self.data,
            out=out,
            sets=self.sets,
            reference=self.reference,
        )
        return {k: m[role].get(k) for k in ("test_top1", "mCE", "hard_top1")}

    def chain(
        self,
        name: str,
        generations: int = 3,
        models: list[str] | None = None,
        after: Callable[[int, str], None] | None = None,
        start: str | None = None,
        **extra: Any,
    ) -> tuple[str, float, list[float]]:
        """`generations` of pseudo-label students, each the next one's teacher; (last model, wall s, each student's wall
        s).

        The first teacher is the seed's supervised one, or the checkpoint `start`. `after(k, checkpoint)` runs after
        generation k, outside the timed part (e.g. to score every generation)."""
        teacher, total, each = start or self.gen0, 0.0, []
        for k in range(1, generations + 1):
            g = self.root / name / f"gen{k}"
            model = {"generations.gen1.model": models[k - 1]} if models else {}
            p = self.params(**extra, **model)
            t0 = time.perf_counter()
            stages.infer.run(p, teacher=teacher, data=self.data, out=str(g / "logits"))
            stages.filter_balance.run(p, logits_store=str(g / "logits"), data=self.data, out=str(g / "pseudo"))
            _, t_student = _timed(
                stages.train_student.run,
                p,
                generation="gen1",
                data=self.data,
                teacher=teacher,
                pseudo=str(g / "pseudo"),
                out=str(g / "student"),
            )
            total, teacher = total + time.perf_counter() - t0, str(g / "student" / stages.CHECKPOINT)
            each.append(t_student)
            if after:
                after(k, teacher)
        return teacher, total, each

    def step_method(self, name: str, budget: float) -> dict[str, Any]:
        """A step-based method with as many steps as fill `budget` seconds (calibrated on a short run)."""
        overrides = STEP_METHODS[name]
        method = overrides["generations.gen1.method"]
        section = "fixmatch" if method == "fixmatch" else "mpl"
        calib = self.params(**overrides, **_steps(section, CALIBRATION_STEPS))
        _, t_calib = _timed(self._train, method, calib, self.root / f"{name}-calibration")
        log = "log.csv" if method == "fixmatch" else "mpl_log.csv"
        steps_per_s = _csv_column(self.root / f"{name}-calibration" / log, "steps_per_s")[-1]
        steps = max(CALIBRATION_STEPS, CALIBRATION_STEPS + int((budget - t_calib) * steps_per_s))
        _, wall = _timed(self._train, method, self.params(**overrides, **_steps(section, steps)), self.root / name)
        return {
            **self.evaluate(str(self.root / name / stages.CHECKPOINT), name),
            "wall_s": wall,
            "steps": steps,
            "steps_per_s": steps_per_s,
        }

    def _train(self, method: str, p: Params, out: Path) -> dict[str, Any]:
        common = {"generation": "gen1", "data": self.data, "teacher": self.gen0, "out": str(out)}
        if method == "mpl":
            return stages.train_mpl.run(p, **common)
        if method == "reduced_mpl":
            logits = self.root / "gen0-logits"
            if not logits.exists():
                stages.infer.run(p, teacher=self.gen0, data=self.data, out=str(logits))
            return stages.train_reduced_mpl.run(p, **common, logits_store=str(logits))
        return stages.train_student.run(p, **common)


def _changed_keys(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _changed_keys(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}")
    return out


def _steps(section: str, steps: int) -> dict[str, Any]:
    # one log row (and validation), at the end; MPL's UDA ramp a quarter of the run (its default, 500, is for
    # longer runs)
    extra = {"methods.mpl.uda_ramp_steps": max(1, steps // 4)} if section == "mpl" else {}
    return {f"{section}.steps": steps, f"{section}.checkpoint_every": steps, **extra}


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


def _csv_column(path: Path, name: str) -> list[float]:
    header, *rows = path.read_text().splitlines()
    i = header.split(",").index(name)
    return [float(r.split(",")[i]) for r in rows if r.split(",")[i]]


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
