"""MPL and reduced MPL steps/s through the train-mpl / train-reduced-mpl stages, with DataLoader workers.

Calls only the stages' public API, so the same script measures any commit: point PYTHONPATH at a checkout
of the commit to compare (e.g. a `git worktree` of the commit before the one-loop change) and run it
with that checkout's code:

    python -m bench.mpl_steps [--workers 2] [--steps 60] [--batch 32] [--model resnet10t] [--device auto]

It trains a random teacher checkpoint's MPL for `steps` steps on 100 labeled images per class and 4000
unlabeled (Fashion-MNIST), no finetune, and reports steps/s of the steps after the first log interval
(mpl_log.csv's steps_per_s: the first interval holds start-up and warm-up).
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

import numpy as np

import selftrain
from selftrain import artifacts, models, stages
from selftrain.data import load_split
from selftrain.params import parse_params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32, help="labeled images per step (mpl.batch_size; unlabeled: 3x)")
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    interval = args.steps // 3
    params = parse_params(
        {
            "data": {"labeled_per_class": 100, "val_per_class": 10, "unlabeled": 4000, "holdout": 0, "test": 100},
            "teacher": {"model": args.model},
            "student": {"augment": "noisy_student"},
            "generations": {"gen1": {"model": args.model, "teacher": "gen0", "method": "mpl"}},
            "mpl": {
                "steps": args.steps,
                "batch_size": args.batch,
                "checkpoint_every": interval,
                "finetune_epochs": 0,
                "uda_ramp_steps": 1,
            },
            "runtime": {"num_workers": args.workers, "device": args.device},
        }
    )
    result = {
        "selftrain": str(Path(selftrain.__file__).parent),
        "workers": args.workers,
        "steps": args.steps,
        "batch": args.batch,
    }
    with tempfile.TemporaryDirectory() as work:
        data, teacher = f"{work}/data", f"{work}/teacher.safetensors"
        stages.prepare.run(params, out=data)
        labeled = load_split(data, "labeled")
        spec = models.ModelSpec(args.model, 10, labeled.images.shape[3], labeled.images.shape[1], labeled.classes)
        models.save_checkpoint(teacher, models.create(spec), spec)
        runs = {"mpl": lambda out: stages.train_mpl.run(params, generation="gen1", data=data, teacher=teacher, out=out)}
        logits = f"{work}/logits"
        stages.infer.run(params, teacher=teacher, data=data, out=logits)
        runs["reduced_mpl"] = lambda out: stages.train_reduced_mpl.run(
            params, generation="gen1", data=data, logits_store=logits, teacher=teacher, out=out
        )
        for method, run in runs.items():
            out = f"{work}/{method}"
            run(out)
            rows = list(csv.DictReader(Path(artifacts.join(out, "mpl_log.csv")).read_text().splitlines()))
            result[f"{method}_steps_s"] = round(float(np.mean([float(r["steps_per_s"]) for r in rows[1:]])), 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
