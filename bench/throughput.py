"""Throughput of selftrain's training loop and infer stage against a bare timm loop, as ratios.

Both sides use the same model, batch size, images and device; the bare side is the
shortest honest loop (tensors already in memory, no augmentation, no logging, plain fp32),
so a ratio below 1 is what the stage's data pipeline and bookkeeping cost.

    python bench/throughput.py [--model resnet10t] [--batch 256] [--steps 40] [--device auto] [--out throughput.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F

from selftrain import artifacts, models, runtime, stages, train
from selftrain.data import save_split
from selftrain.data.splits import make_splits
from selftrain.noise import clean_batch
from selftrain.params import DataParams, Params, TrainParams


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bare_train(model_name: str, images: np.ndarray, labels: np.ndarray, batch: int, steps: int, device: torch.device) -> float:
    model = timm.create_model(model_name, num_classes=10, in_chans=images.shape[3]).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
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


def stage_train(model_name: str, split, batch: int, steps: int, device: torch.device) -> float:
    """selftrain.train.fit (augmentation, DataLoader, schedule, logging) for `steps` steps."""
    epochs = max(1, round(steps * batch / len(split)))
    p = TrainParams(epochs=epochs, batch_size=batch, augment="s1")
    spec = models.ModelSpec(model_name, 10, split.images.shape[3], split.images.shape[1], split.classes)
    model = runtime.place(models.create(spec), device)
    train.fit(model, p.model_copy(update={"epochs": 1}), split, device, seed=0, desc="warm-up")
    sync(device)
    t0 = time.perf_counter()
    train.fit(model, p, split, device, seed=0, desc="stage train")
    sync(device)
    steps_done = epochs * (len(split) // batch)
    return steps_done * batch / (time.perf_counter() - t0)


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
    stages.infer(params, teacher=ckpt, data=data_uri, out=artifacts.join(work, "warm"))
    sync(device)
    t0 = time.perf_counter()
    stages.infer(params, teacher=ckpt, data=data_uri, out=artifacts.join(work, "logits"))
    sync(device)
    return len(unlabeled) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=40, help="training steps per side")
    ap.add_argument("--unlabeled", type=int, default=20000, help="images for the inference comparison")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", metavar="FILE", help="add this model's stage throughputs to FILE, the format `selftrain plan --throughput` reads")
    args = ap.parse_args()

    device = runtime.pick_device(args.device)
    params = Params(data=DataParams(unlabeled=args.unlabeled), runtime={"device": args.device}, infer={"batch_size": args.batch})
    splits = make_splits(params.data, params.seed)
    labeled = splits["labeled"]
    with tempfile.TemporaryDirectory() as work:
        data_uri = artifacts.join(work, "data")
        with artifacts.atomic_dir(data_uri) as d:
            for name, s in splits.items():
                save_split(artifacts.join(d, f"{name}.npz"), s)
        result = {"device": str(device), "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                  "model": args.model, "batch": args.batch}
        result["train_bare_img_s"] = bare_train(args.model, labeled.images, labeled.labels, args.batch, args.steps, device)
        result["train_stage_img_s"] = stage_train(args.model, labeled, args.batch, args.steps, device)
        result["infer_bare_img_s"] = bare_infer(args.model, splits["unlabeled"].images, args.batch, device)
        result["infer_stage_img_s"] = stage_infer(args.model, params, data_uri, work, device)
    result["train_ratio"] = result["train_stage_img_s"] / result["train_bare_img_s"]
    result["infer_ratio"] = result["infer_stage_img_s"] / result["infer_bare_img_s"]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}, indent=2))
    if args.out:
        path = Path(args.out)
        table = json.loads(path.read_text()) if path.exists() else {"device": result["device"], "models": {}}
        table["models"][args.model] = {"train_img_s": result["train_stage_img_s"], "infer_img_s": result["infer_stage_img_s"], "batch": args.batch}
        path.write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
