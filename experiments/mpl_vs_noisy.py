"""MPL (with finetune) and reduced MPL vs Noisy Student at an equal wall-clock budget, one generation, per seed.

Per seed: prepare and the supervised teacher (params.yaml, seed N), its logits, then
  1. Noisy Student: filter-balance + train-student as params.yaml has them; its wall time W is the budget;
  2. MPL and reduced MPL: a short calibration run gives each one's steps/s (the per-step cost ratio of
     reduced to full MPL comes from these), then mpl.steps is set so that steps + finetune take W;
every student's test top-1 is measured on the same test split. Raw results go to mpl_vs_noisy.json
(appended per seed, so a killed run picks up where it stopped), the table to stdout.

    python -m experiments.mpl_vs_noisy --seeds 0 1 2 --out runs/mpl_vs_noisy.json   # from the project root; ~28 min a
    seed on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from experiments.seed import csv_column, timed
from selftrain import models, runtime, stages
from selftrain.accuracy import accuracy
from selftrain.data import load_split
from selftrain.params import Params, load_params

CALIBRATION_STEPS = 50  # the first steps run slower: too few made the budget estimate short


def _test_top1(params: Params, checkpoint: str, data: str) -> float:
    net, _ = models.load_checkpoint(checkpoint)
    device = runtime.pick_device(params.runtime.device)
    return accuracy(runtime.place(net, device), load_split(data, "test"), params.evaluate.batch_size, device)["top1"]


def _mpl_overrides(steps: int) -> dict:
    # the UDA ramp is a quarter of the run, as in the TwoMoons setup (the default, 500 steps, is for longer runs);
    # one checkpoint, at the end: the log then holds the mean over the whole run
    return {
        "methods.mpl.steps": steps,
        "methods.mpl.uda_ramp_steps": max(1, steps // 4),
        "methods.mpl.checkpoint_every": steps,
    }


def run_seed(seed: int, work: Path, params_path: str) -> dict:
    root = work / f"seed{seed}"
    data, gen0, logits_uri = str(root / "data"), str(root / "gen0.json"), str(root / "logits")
    params = load_params(params_path, {"seed": seed})
    stages.prepare.run(params, out=data)
    _, t_teacher = timed(stages.train_teacher.run, params, data=data, out=str(root / "teacher"), promoted=gen0)
    stages.infer.run(params, teacher=gen0, data=data, out=logits_uri)
    row: dict = {
        "teacher": {
            "test_top1": _test_top1(params, str(root / "teacher" / stages.CHECKPOINT), data),
            "wall_s": t_teacher,
        }
    }

    stages.filter_balance.run(params, logits_store=logits_uri, data=data, out=str(root / "pseudo"))
    _, budget = timed(
        stages.train_student.run,
        params,
        generation="gen1",
        data=data,
        teacher=gen0,
        out=str(root / "noisy_student"),
        pseudo=str(root / "pseudo"),
    )
    row["noisy_student"] = {
        "test_top1": _test_top1(params, str(root / "noisy_student" / stages.CHECKPOINT), data),
        "wall_s": budget,
    }

    for method in ("mpl", "reduced_mpl"):
        row[method] = run_method(method, seed, root, params_path, budget)
    row["reduced_over_full_step_time"] = row["mpl"]["steps_per_s"] / row["reduced_mpl"]["steps_per_s"]
    return row


def run_method(method: str, seed: int, root: Path, params_path: str, budget: float) -> dict:
    """One MPL method from the seed's data, teacher and logits under `root`, with as many steps as fill `budget`
    seconds."""
    data, gen0, logits_uri = str(root / "data"), str(root / "gen0.json"), str(root / "logits")
    fn, extra = (
        (stages.train_mpl.run, {}) if method == "mpl" else (stages.train_reduced_mpl.run, {"logits_store": logits_uri})
    )
    # calibration: the whole run (set-up, finetune, save) but only a few steps; the full run then adds
    # steps at the measured rate until it fills the budget
    calib = load_params(params_path, {"seed": seed, **_mpl_overrides(CALIBRATION_STEPS)})
    _, t_calib = timed(
        fn, calib, generation="gen1", data=data, teacher=gen0, out=str(root / f"{method}-calibration"), **extra
    )
    steps_per_s = csv_column(root / f"{method}-calibration" / "mpl_log.csv", "steps_per_s")[-1]
    steps = max(CALIBRATION_STEPS, CALIBRATION_STEPS + int((budget - t_calib) * steps_per_s))
    p = load_params(params_path, {"seed": seed, **_mpl_overrides(steps)})
    _, wall = timed(fn, p, generation="gen1", data=data, teacher=gen0, out=str(root / method), **extra)
    return {
        "test_top1": _test_top1(p, str(root / method / stages.CHECKPOINT), data),
        "wall_s": wall,
        "steps": steps,
        "steps_per_s": steps_per_s,
        "mean_h": statistics.fmean(csv_column(root / method / "mpl_log.csv", "h")),
        "mpl_val_top1": csv_column(root / method / "mpl_log.csv", "val_top1")[-1],  # before the finetune
    }


def _stats(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.fmean(values):.2f} ± {100 * sd:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--work", default="runs/mpl_vs_noisy", help="artifacts of every run (default: %(default)s)")
    ap.add_argument("--out", default="mpl_vs_noisy.json", help="raw results, appended per seed (default: %(default)s)")
    ap.add_argument(
        "--rerun",
        choices=["mpl", "reduced_mpl"],
        help="run this method again on seeds already done (same data, teacher, logits and budget); the old result is "
        "kept as METHOD_previous",
    )
    args = ap.parse_args()
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for seed in args.seeds:
        row = results.get(str(seed))
        if row is None:
            results[str(seed)] = run_seed(seed, Path(args.work), args.params)
        elif args.rerun:
            row[f"{args.rerun}_previous"] = row[args.rerun]
            row[args.rerun] = run_method(
                args.rerun, seed, Path(args.work) / f"seed{seed}", args.params, row["noisy_student"]["wall_s"]
            )
            row["reduced_over_full_step_time"] = row["mpl"]["steps_per_s"] / row["reduced_mpl"]["steps_per_s"]
        out.write_text(json.dumps(results, indent=1))
    rows = list(results.values())
    print(
        "| student (one generation, equal wall clock) | test top-1 % (mean ± std) | per seed | wall s (mean) | steps |"
    )
    print("|---|---:|---|---:|---|")
    for method in ("teacher", "noisy_student", "mpl", "reduced_mpl", "reduced_mpl_previous"):
        done = [r[method] for r in rows if method in r]  # *_previous: only the seeds that were rerun
        if not done:
            continue
        accs = [m["test_top1"] for m in done]
        steps = ", ".join(str(m["steps"]) for m in done) if "steps" in done[0] else ""
        print(
            f"| {method} | {_stats(accs)} | {', '.join(f'{100 * a:.2f}' for a in accs)} | "
            f"{statistics.fmean(m['wall_s'] for m in done):.0f} | {steps} |"
        )
    ratios = [r["reduced_over_full_step_time"] for r in rows]
    print(
        f"\nreduced MPL step time / full MPL step time: {statistics.fmean(ratios):.3f} (per seed "
        f"{', '.join(f'{x:.3f}' for x in ratios)})"
    )


if __name__ == "__main__":
    main()
