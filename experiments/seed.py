"""One seed's shared runs for the research runners: its split, supervised teacher, robustness sets and reference,
made once and checked against the params they came from, then each method trained on them and scored the same way
(test top-1, mCE and -A top-1 against the seed's teacher)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from experiments import run_args
from selftrain import stages
from selftrain.params import Params, load_params

PREPARED_FROM = ("seed", "data", "teacher", "robustness")  # the params sections Seed.prepare's artifacts depend on
CALIBRATION_STEPS = 50  # the first steps run slower: too few made the budget estimate short


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
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
            _, t_student = timed(
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
        overrides = run_args.overlay(name)
        method = overrides["generations.gen1.method"]
        section = "fixmatch" if method == "fixmatch" else "mpl"
        calib = self.params(**overrides, **_steps(section, CALIBRATION_STEPS))
        _, t_calib = timed(self._train, method, calib, self.root / f"{name}-calibration")
        log = "log.csv" if method == "fixmatch" else "mpl_log.csv"
        steps_per_s = csv_column(self.root / f"{name}-calibration" / log, "steps_per_s")[-1]
        steps = max(CALIBRATION_STEPS, CALIBRATION_STEPS + int((budget - t_calib) * steps_per_s))
        _, wall = timed(self._train, method, self.params(**overrides, **_steps(section, steps)), self.root / name)
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


def csv_column(path: Path, name: str) -> list[float]:
    header, *rows = path.read_text().splitlines()
    i = header.split(",").index(name)
    return [float(r.split(",")[i]) for r in rows if r.split(",")[i]]
