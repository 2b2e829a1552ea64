"""Throughput of selftrain's training steps and infer stage against a bare timm loop, as ratios.

Both sides use the same model, batch size (images per step), images and device; the bare side is the
shortest honest loop (tensors already in memory, no augmentation, no logging, plain fp32), so for the
teacher's step a ratio below 1 is what the data pipeline and bookkeeping cost. Every step kind of the
method registry is measured the same way (images/s: the images a step trains its model on): the student
adds RandAugment; MPL runs a teacher beside the student (1 + 2r views through it and a second student
forward per step), FixMatch a weak view without gradient beside the strong one, so their ratios are also the
method's own extra work, not only overhead. A method added to the registry with a step class not measured here
stops the run with an error rather than leaving a gap in the table.

With --compile, every model (the bare loop's and the steps') is `torch.compile`d on any device: selftrain compiles
only on CUDA (`runtime.compile`), and a run with and one without on the same machine say whether CPU should too.

    python -m bench.throughput [--model resnet10t] [--batch 256] [--steps 40] [--device auto] [--workers 0]
    [--compile] [--out throughput.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import cast

import numpy as np
import timm
import torch
import torch.nn.functional as F

from selftrain import artifacts, methods, models, runtime, stages, train
from selftrain.data import save_split
from selftrain.data.splits import make_splits
from selftrain.inputs import clean_batch
from selftrain.methods.fixmatch import FixMatchParams
from selftrain.methods.fixmatch.step import FixMatchStep
from selftrain.methods.mpl import MplParams
from selftrain.methods.mpl.step import MplStep
from selftrain.methods.noisy_student.step import PseudoLabelStep
from selftrain.methods.reduced_mpl import ReducedMplParams
from selftrain.methods.reduced_mpl.step import ReducedMplStep
from selftrain.methods.reduced_mpl.update import LogitTeacher
from selftrain.params import DataParams, Params, StudentParams, TrainParams
from selftrain.steps.supervised import SupervisedStep


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def compiled(model: torch.nn.Module, compile: bool) -> torch.nn.Module:
    return cast(torch.nn.Module, torch.compile(model)) if compile else model


def bare_train(
    model_name: str, images: np.ndarray, labels: np.ndarray, batch: int, steps: int, device: torch.device, compile: bool
) -> float:
    model = timm.create_model(model_name, num_classes=10, in_chans=images.shape[3]).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model = compiled(model, compile)
    x_all, y_all = clean_batch(images).to(device), torch.from_numpy(labels).to(device)
    idx = torch.randint(0, len(x_all), (steps + 2, batch))
    for i in range(2):  # warm-up
        F.cross_entropy(model(x_all[idx[i]]), y_all[idx[i]]).backward()
        opt.step(), opt.zero_grad()
    sync(device)
    t0 = time.perf_counter()
    for i in range(2, steps + 2):
        loss = F.cross_entropy(model(x_all[idx[i]]), y_all[idx[i]])
        opt.zero_grad()
        loss.backward()
        opt.step()
    sync(device)
    return steps * batch / (time.perf_counter() - t0)


def step_kinds(
    model_name: str, splits: dict, batch: int, device: torch.device, workers: int, compile: bool
) -> dict[str, Callable[[], train.Step]]:
    """Every step kind of the registry's methods, each a fresh model (and teacher) on the same data: teacher
    (supervised), student (pseudo-labels: noisy_student, distill), mpl, reduced_mpl and fixmatch, each about `batch`
    images a step: the student's and MPL's a labeled quarter, FixMatch's a labeled seventh, its unlabeled images
    seen twice (weak and strong view)."""
    labeled, unlabeled = splits["labeled"], splits["unlabeled"]
    spec = models.ModelSpec(model_name, 10, labeled.images.shape[3], labeled.images.shape[1], labeled.classes)
    ctx = train.Context(device, workers=workers)
    ratio = 3
    teacher_p = TrainParams(epochs=1_000, batch_size=batch, augment="s1")
    student_p = StudentParams(
        epochs=1_000, batch_size=batch // (1 + ratio), unlabeled_ratio=ratio, augment="noisy_student"
    )
    mpl_p = MplParams(steps=1_000, batch_size=batch // (1 + ratio), unlabeled_ratio=ratio, uda_ramp_steps=1)
    fixmatch_p = FixMatchParams(
        steps=1_000, batch_size=batch // (1 + 2 * ratio), unlabeled_ratio=ratio, threshold="freematch", dist_align=True
    )
    soft = np.full((len(unlabeled), 10), 0.1, dtype=np.float32)
    stored = np.log(soft)

    def net() -> torch.nn.Module:
        return compiled(runtime.place(models.create(spec), device), compile)

    return {
        "teacher": lambda: SupervisedStep(net(), teacher_p, labeled, ctx, 0),
        "student": lambda: PseudoLabelStep(net(), student_p, labeled, (unlabeled.images, soft), ctx, 0),
        "mpl": lambda: MplStep(net(), net(), mpl_p, student_p, labeled, unlabeled.images, ctx, 0),
        "reduced_mpl": lambda: ReducedMplStep(
            net(),
            LogitTeacher(10, 128).to(device),
            mpl_p,
            student_p,
            labeled,
            unlabeled.images,
            ctx,
            0,
            stored=stored,
            rp=ReducedMplParams(),
        ),
        "fixmatch": lambda: FixMatchStep(net(), fixmatch_p, student_p, labeled, unlabeled.images, ctx, 0),
    }


def unmeasured(steps: dict[str, train.Step]) -> set[str]:
    """The registry's step classes that none of `steps` is."""
    measured = {f"{type(step).__module__}:{type(step).__name__}" for step in steps.values()}
    return {m.step for m in methods.registry().values()} - measured


def step_rate(step: train.Step, steps: int, device: torch.device) -> dict[str, float]:
    """images/s and steps/s of selftrain.train.fit running `steps` steps (after 3 warm-up steps): the step's data
    pipeline (augmentation, DataLoader), its updates and the loop's bookkeeping. Images: what the step trains on."""
    step.total = 3 + 3 * max(1, steps // 3)
    _, rows, _ = train.fit(
        step, step.ctx, 0, log_every=3, desc="bench"
    )  # a row every 3 steps: the first is the warm-up
    timed = rows[1:]
    return {
        "img_s": statistics.fmean(r["images_per_s"] for r in timed),
        "steps_s": statistics.fmean(r["steps_per_s"] for r in timed),
    }


def bare_infer(model_name: str, images: np.ndarray, batch: int, device: torch.device) -> float:
    model = timm.create_model(model_name, num_classes=10, in_chans=images.shape[3]).to(device).eval()
    x_all = clean_batch(images).to(device)
    with torch.no_grad():
        model(x_all[:batch])
        sync(device)
        t0 = time.perf_counter()
        for s in range(0, len(x_all), batch):
            model(x_all[s : s + batch]).float().cpu()
        sync(device)
    return len(images) / (time.perf_counter() - t0)


def stage_infer(model_name: str, params: Params, data_uri: str, work: str, device: torch.device) -> float:
    """The whole `infer` stage: load checkpoint and split, run, write the logit store atomically."""
    ckpt = artifacts.join(work, "teacher.safetensors")
    unlabeled = make_splits(params.data, params.seed)["unlabeled"]
    spec = models.ModelSpec(model_name, 10, unlabeled.images.shape[3], unlabeled.images.shape[1], unlabeled.classes)
    models.save_checkpoint(ckpt, models.create(spec), spec)
    stages.infer.run(params, teacher=ckpt, data=data_uri, out=artifacts.join(work, "warm"))
    sync(device)
    t0 = time.perf_counter()
    stages.infer.run(params, teacher=ckpt, data=data_uri, out=artifacts.join(work, "logits"))
    sync(device)
    return len(unlabeled) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=40, help="training steps per side")
    ap.add_argument("--unlabeled", type=int, default=20000, help="images for the inference comparison")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers per step (runtime.num_workers)")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile every model, on any device (the first steps, untimed, compile)",
    )
    ap.add_argument(
        "--out",
        metavar="FILE",
        help="add this model's stage throughputs to FILE, the format `selftrain plan --throughput` reads",
    )
    args = ap.parse_args()

    device = runtime.pick_device(args.device)
    params = Params(
        data=DataParams(unlabeled=args.unlabeled), runtime={"device": args.device}, infer={"batch_size": args.batch}
    )
    splits = make_splits(params.data, params.seed)
    labeled = splits["labeled"]
    with tempfile.TemporaryDirectory() as work:
        data_uri = artifacts.join(work, "data")
        with artifacts.atomic_dir(data_uri) as d:
            for name, s in splits.items():
                save_split(artifacts.join(d, f"{name}.npz"), s)
        result = {
            "device": str(device),
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "model": args.model,
            "batch": args.batch,
            "compile": args.compile,
        }
        kinds = {
            kind: make()
            for kind, make in step_kinds(args.model, splits, args.batch, device, args.workers, args.compile).items()
        }
        if missing := unmeasured(kinds):
            raise SystemExit(
                f"bench/throughput.py builds no step of {', '.join(sorted(missing))}: add a kind to step_kinds"
            )
        result["train_bare_img_s"] = bare_train(
            args.model, labeled.images, labeled.labels, args.batch, args.steps, device, args.compile
        )
        for kind, step in kinds.items():
            rate = step_rate(step, args.steps, device)
            result[f"{kind}_img_s"], result[f"{kind}_steps_s"] = rate["img_s"], rate["steps_s"]
            result[f"{kind}_ratio"] = rate["img_s"] / result["train_bare_img_s"]
        result["train_stage_img_s"] = result["teacher_img_s"]
        result["infer_bare_img_s"] = bare_infer(args.model, splits["unlabeled"].images, args.batch, device)
        result["infer_stage_img_s"] = stage_infer(args.model, params, data_uri, work, device)
    result["infer_ratio"] = result["infer_stage_img_s"] / result["infer_bare_img_s"]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}, indent=2))
    if args.out:
        path = Path(args.out)
        table = json.loads(path.read_text()) if path.exists() else {"device": result["device"], "models": {}}
        table["models"][args.model] = {
            "train_img_s": result["train_stage_img_s"],
            "infer_img_s": result["infer_stage_img_s"],
            "batch": args.batch,
        }
        path.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
