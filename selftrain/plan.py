"""Capacity plan: per stage, the images a run processes, the GPU-hours at measured throughputs, and the wall time
on a node pool of a given size, so an ops team can size a pool before a long run.

Work is counted in image passes: a training pass is a forward and backward of one image, an inference
pass a forward. Throughputs (images per second per GPU, per model) come from a JSON file written by
`bench/throughput.py --out` (measured on the pool's GPU type) or from a short probe on this node.
Training stages run in one pod (one GPU, or a DDP job); `infer` is sharded over every GPU of the pool.
Noisy Student's pseudo-label set is taken as the whole unlabeled pool (the confidence threshold makes
it smaller, balancing with upsampling can make it larger): the plan says so in its assumptions.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from selftrain import methods
from selftrain.params import Params
from selftrain.robustness.corruptions import CORRUPTIONS
from selftrain.robustness.perturbations import PERTURBATIONS

SEVERITIES = 5
FASHION_MNIST_CLASSES = 10
FASHION_MNIST_TEST = 10_000


@dataclass(frozen=True)
class StageWork:
    stage: str
    model: str
    train_images: int  # forward + backward passes
    infer_images: int  # forward passes
    sharded: bool  # spread over every GPU of the pool (infer), or one pod


def _classes(params: Params) -> int:
    if params.data.source == "fashion_mnist":
        return FASHION_MNIST_CLASSES
    raise ValueError("selftrain plan: data.source 'folders' has no fixed class count; pass --classes N")


def _eval_images(params: Params, test: int) -> int:
    r = params.robustness
    return (
        test
        + r.corruption_images * (1 + len(CORRUPTIONS) * SEVERITIES)
        + r.perturbation_images * r.frames * len(PERTURBATIONS)
    )


def work(params: Params, classes: int | None = None) -> list[StageWork]:
    """The image passes of every GPU stage of a full run of `params` (all generations)."""
    k = classes or _classes(params)
    d = params.data
    labeled, val, unlabeled = d.labeled_per_class * k, d.val_per_class * k, d.unlabeled
    test = d.test or FASHION_MNIST_TEST
    t = params.teacher

    def validations(p: Any) -> int:  # every val_every epochs and after the last
        return len(set(range(p.val_every, p.epochs + 1, p.val_every)) | {p.epochs})

    out = [
        StageWork("train-teacher", t.model, t.epochs * labeled, validations(t) * val, False),
        StageWork("robustness-reference", t.model, 0, _eval_images(params, 0) + d.holdout, False),
    ]
    teacher_model = t.model
    for name, g in params.generations.items():
        out.append(StageWork(f"infer@{name}", teacher_model, 0, unlabeled, True))
        trained, passes = methods.get(g.method).work(params, labeled, unlabeled)
        out.append(StageWork(f"train-student@{name}", g.model, trained, passes * val, False))
        out.append(
            StageWork(
                f"evaluate@{name}",
                g.model,
                0,
                2 * (val + _eval_images(params, test) + params.robustness.hard_images),
                False,
            )
        )
        teacher_model = g.model
    return out


def probe(names: set[str], params: Params, steps: int = 5, batch: int = 64) -> dict[str, Any]:
    """Measure training and inference images/s of each model on this node (synthetic images of the params' shape)."""
    import torch
    import torch.nn.functional as F

    from selftrain import models, runtime

    device = runtime.pick_device(params.runtime.device)
    shape = (batch, params.data.channels, params.data.image_size, params.data.image_size)
    rates: dict[str, dict[str, float]] = {}
    for name in sorted(names):
        net = runtime.place(
            models.create(models.ModelSpec(name, 10, params.data.channels, params.data.image_size, ())), device
        )
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        x, y = runtime.to_device(torch.randn(shape), device), torch.randint(0, 10, (batch,), device=device)

        def timed(fn) -> float:
            fn()  # warm-up
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            return steps * batch / (time.perf_counter() - t0)

        def train_step() -> None:
            opt.zero_grad()
            with runtime.autocast(device):
                loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()

        def infer_step() -> None:
            with torch.no_grad(), runtime.autocast(device):
                net(x)

        net.train()
        train = timed(train_step)
        net.eval()
        rates[name] = {"train_img_s": train, "infer_img_s": timed(infer_step)}
    return {"device": str(device), "models": rates}


def plan(
    params: Params, throughput: dict[str, Any], nodes: int, gpus_per_node: int, classes: int | None = None
) -> list[dict[str, Any]]:
    """Per stage: images, GPU-hours and wall hours on `nodes` x `gpus_per_node` GPUs."""
    rates = throughput["models"]
    rows = []
    for w in work(params, classes):
        if w.model not in rates:
            raise ValueError(
                f"no throughput for model '{w.model}' (have {', '.join(sorted(rates))}): measure it with "
                "bench/throughput.py --model ... --out, or use --probe"
            )
        seconds = w.train_images / rates[w.model]["train_img_s"] + w.infer_images / rates[w.model]["infer_img_s"]
        gpus = nodes * gpus_per_node if w.sharded else 1
        rows.append(
            {
                "stage": w.stage,
                "model": w.model,
                "images": w.train_images + w.infer_images,
                "gpu_hours": seconds / 3600,
                "wall_hours": seconds / 3600 / gpus,
                "gpus": gpus,
            }
        )
    return rows


def table(rows: list[dict[str, Any]], throughput: dict[str, Any], nodes: int, gpus_per_node: int) -> str:
    lines = [
        f"capacity plan: {nodes} node(s) x {gpus_per_node} GPU(s), throughputs from {throughput.get('device', '?')}",
        "",
        "| stage | model | image passes | GPU-hours | wall hours | GPUs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | {r['model']} | {r['images']:,} | {r['gpu_hours']:.2f} | {r['wall_hours']:.2f} | "
            f"{r['gpus']} |"
        )
    lines.append(
        f"| **total** | | {sum(r['images'] for r in rows):,} | {sum(r['gpu_hours'] for r in rows):.2f} | "
        f"{sum(r['wall_hours'] for r in rows):.2f} | |"
    )
    lines += [
        "",
        "assumptions: stages run one after another; infer is sharded over every GPU, training uses one; "
        "Noisy Student's pseudo-labels ~ the whole unlabeled pool; CPU-only stages (prepare, filter-balance, "
        "robustness sets, promote, report) are not counted.",
    ]
    return "\n".join(lines)


def load_throughput(path: str) -> dict[str, Any]:
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data.get("models"), dict):
        raise ValueError(
            f"'{path}' is not a throughput file: expected "
            f'{{"device": ..., "models": {{model: {{train_img_s, infer_img_s}}}}}}'
        )
    return data
