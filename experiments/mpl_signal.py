"""How much of MPL's h is signal: repeated MPL steps on the same batches, per way of measuring h (mpl.signal).

From one state (student = the teacher's copy with the student's noise, the teacher, both optimisers fresh), for
each of --batches step batches, --repeats MPL steps are taken from that same state, each with another torch seed
(other dropout and stochastic-depth masks in every pass), and h recorded. Per batch, the mean of h over the
repeats is what that batch's pseudo-labels did to the student (the signal the teacher should follow) and their
spread is noise: SNR = |mean| / std, the median over batches. A second run with the student's learning rate at 0
(no update, so the true change is 0) gives the noise floor: the spread of h when nothing changed.

    python -m experiments.mpl_signal --work runs/mpl_signal --set data.unlabeled=4000 --set teacher.epochs=20
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path
from typing import Any

import torch
import yaml

from selftrain import models, stages
from selftrain.data import load_split
from selftrain.methods.mpl.update import MplState, mpl_step
from selftrain.params import load_params
from selftrain.steps.views import StepImages, on_device
from selftrain.train import Context

SIGNALS = ("train", "eval", "dot")


def measure(
    params: Any, data: str, teacher_ckpt: str, signal: str, batches: int, repeats: int, student_lr: float | None
) -> list[list[float]]:
    labeled, unlabeled = load_split(data, "labeled"), load_split(data, "unlabeled")
    teacher0, spec = models.load_checkpoint(teacher_ckpt)
    student0 = models.create(spec, params.student.drop_rate, params.student.drop_path_rate)
    models.init_from(student0, spec, teacher_ckpt)
    p = params.methods.mpl
    images = StepImages(
        labeled,
        unlabeled.images,
        p.batch_size,
        p.unlabeled_ratio,
        params.student,
        params.seed,
        Context(torch.device("cpu")).world,
    )
    cfg = p.model_copy(update={"signal": signal})
    lr = p.student_lr if student_lr is None else student_lr
    out = []
    for b in range(batches):
        x_l, y_l, x_uw, x_us = on_device(images[b], params.student, torch.device("cpu"))
        hs = []
        for r in range(repeats):
            teacher, student = copy.deepcopy(teacher0).train(), copy.deepcopy(student0).train()
            t_opt = torch.optim.AdamW(teacher.parameters(), lr=p.teacher_lr, weight_decay=p.weight_decay)
            s_opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=p.weight_decay)
            torch.manual_seed(1000 * b + r)
            hs.append(mpl_step(teacher, student, t_opt, s_opt, x_l, y_l, x_uw, x_us, cfg, MplState())["h"])
        out.append(hs)
    return out


def summary(hs: list[list[float]]) -> dict[str, float]:
    means, sds = [statistics.fmean(h) for h in hs], [statistics.stdev(h) for h in hs]
    snr = [abs(m) / s if s > 0 else float("inf") for m, s in zip(means, sds)]
    return {
        "median_snr": statistics.median(snr),
        "noise_sd": statistics.fmean(sds),  # spread of h on one batch
        "signal_sd": statistics.stdev(means),  # spread of the per-batch means across batches
        "mean_h": statistics.fmean(means),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--work", default="runs/mpl_signal")
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="mpl_signal.json")
    args = ap.parse_args()
    params = load_params(args.params, {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)})
    work = Path(args.work)
    data, gen0 = str(work / "data"), str(work / "gen0.json")
    if not (work / "teacher").exists():
        stages.prepare.run(params, out=data)
        stages.train_teacher.run(params, data=data, out=str(work / "teacher"), promoted=gen0)
    ckpt = str(work / "teacher" / stages.CHECKPOINT)
    results: dict[str, Any] = {}
    for signal in SIGNALS:
        results[signal] = summary(measure(params, data, ckpt, signal, args.batches, args.repeats, None))
        results[f"{signal}, no update (lr 0)"] = summary(
            measure(params, data, ckpt, signal, args.batches, args.repeats, 0.0)
        )
        print(signal, results[signal], flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(
        "| h measured | median SNR per batch | noise sd (one batch) | sd of per-batch means | noise sd with no update |"
    )
    print("|---|---:|---:|---:|---:|")
    for signal in SIGNALS:
        r, null = results[signal], results[f"{signal}, no update (lr 0)"]
        print(
            f"| {signal} | {r['median_snr']:.2f} | {r['noise_sd']:.2e} | {r['signal_sd']:.2e} | "
            f"{null['noise_sd']:.2e} |"
        )


if __name__ == "__main__":
    main()
