"""The supervised teacher alone, trained longer or with stronger augmentation: the baseline a self-training method
has to beat when it is given the same wall clock.

Per seed: prepare the split (shared by every variant of that seed under --work), train the teacher with params.yaml
plus this variant's --set overrides, and score it on the test split. Records the teacher's training wall time,
its last val top-1 and its test top-1 under --tag in --out (appended, so variants and seeds accumulate).

    python -m experiments.supervised --tag default --seeds 0 1 2 --out supervised.json
    python -m experiments.supervised --tag e60_s1 --seeds 0 1 2 --set teacher.epochs=60 --set teacher.augment=s1 --out
    supervised.json
    python -m experiments.supervised --tag e240_s2 --seeds 0 1 2 --set teacher.epochs=240 --set teacher.augment=s2 --out
    supervised.json
    python -m experiments.supervised --show supervised.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from experiments import run_args
from selftrain import models, runtime, stages
from selftrain.accuracy import accuracy
from selftrain.data import load_split
from selftrain.params import load_params


def run(seed: int, tag: str, work: Path, params_path: str, overrides: dict[str, Any]) -> dict[str, Any]:
    p = load_params(params_path, {**overrides, "seed": seed})
    data, out = work / f"seed{seed}" / "data", work / f"seed{seed}" / tag
    if not (data / "test.npz").exists():
        stages.prepare.run(p, out=str(data))
    t0 = time.perf_counter()
    summary = stages.train_teacher.run(p, data=str(data), out=str(out / "teacher"), promoted=str(out / "gen0.json"))
    wall = time.perf_counter() - t0
    device = runtime.pick_device(p.runtime.device)
    net, _ = models.load_checkpoint(str(out / "teacher" / stages.CHECKPOINT))
    test = accuracy(runtime.place(net.eval(), device), load_split(str(data), "test"), p.evaluate.batch_size, device)[
        "top1"
    ]
    return {"overrides": overrides, "wall_s": wall, "val_top1": summary.get("val_top1"), "test_top1": test}


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| variant | seeds | test top-1 % (mean ± std) | per seed | wall s (mean) |", "|---|---|---:|---|---:|"]
    for tag, seeds in results.items():
        acc = [100 * r["test_top1"] for r in seeds.values()]
        spread = f" ± {statistics.stdev(acc):.2f}" if len(acc) > 1 else ""
        per = " / ".join(f"{a:.2f}" for a in acc)
        lines.append(
            f"| {tag} | {', '.join(seeds)} | {statistics.mean(acc):.2f}{spread} | {per} | "
            f"{statistics.mean(r['wall_s'] for r in seeds.values()):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", help="this variant's name in --out")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    run_args.add(ap, work="runs/supervised", out="supervised.json")
    args = ap.parse_args()
    if args.show:
        print(table(json.loads(Path(args.show).read_text())))
        return
    if not args.tag:
        ap.error("--tag is required to run")
    results = run_args.results(args)
    for seed in args.seeds:
        if str(seed) not in results.get(args.tag, {}):  # a killed run picks up at the next seed
            results.setdefault(args.tag, {})[str(seed)] = run(
                seed, args.tag, Path(args.work), args.params, run_args.overrides(args)
            )
            run_args.save(args, results)
    print(table(results))


if __name__ == "__main__":
    main()
