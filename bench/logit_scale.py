"""The logit store and filter-balance at pool scale: 1 M and 10 M images x 1000 classes.

For N synthetic teacher outputs (random logits, a temperature per image so confidences spread), written
through the store's own streaming writer as top-k float16:
- size: the store's bytes vs dense float32 (N x C x 4);
- filter: the filter-balance stage itself (`stages.filter_balance`: two passes over the store, soft labels,
  per-class balance to the median, pseudo-label shards written atomically) vs one plain sequential
  read of all the store's files, as a ratio (read time / filter time), with a warm page cache and, where this
  process may drop the cache (root), a cold one; also against a cold read of only the columns the filter reads
  (values and class indices); best of --repeat runs each; and the filter's peak RSS (VmHWM of its own process,
  imports included). The stage reads the unlabeled split's class names and hash, not its images, so the data
  artifact here holds a one-image split with the store's 1000 classes;
- store vs recompute: images per second read back from the store (decoded, every shard) vs the teacher
  (resnet10t, eval mode, batch 512) recomputing logits on this machine, measured on a subset.

    python -m bench.logit_scale --images 1000000 10000000 --out bench/results/logit_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from selftrain import artifacts, logits, models, runtime, stages
from selftrain.data import Split, save_split
from selftrain.params import parse_params
from selftrain.predict import iter_logits

CHUNK = 100_000


def write_data(uri: str, classes: int) -> str:
    """A prepare-like data artifact whose unlabeled split names `classes` classes; its hash, for the store's header."""
    with artifacts.atomic_dir(uri) as staging:
        save_split(
            artifacts.join(staging, "unlabeled.npz"),
            Split(
                np.zeros((1, 1, 1, 1), np.uint8),
                np.array([-1]),
                np.array(["u0"]),
                tuple(f"class{c}" for c in range(classes)),
            ),
        )
    return artifacts.require_complete(uri)["files"]["unlabeled.npz"]


def write_store(uri: str, n: int, classes: int, k: int, shard: int, unlabeled_sha256: str, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    with artifacts.atomic_dir(uri) as staging:
        writer = logits.LogitWriter(
            staging, classes, k, shard, teacher_sha256="bench", unlabeled_sha256=unlabeled_sha256
        )
        for start in range(0, n, CHUNK):
            rows = min(CHUNK, n - start)
            scale = torch.rand(rows, 1, generator=gen) * 8  # sharp and flat teachers alike
            writer.add(
                np.char.add("u", np.arange(start, start + rows).astype(str)),
                torch.randn(rows, classes, generator=gen) * scale,
            )
        writer.close()
    return time.perf_counter() - t0


def store_bytes(uri: str) -> int:
    return sum(p.stat().st_size for p in Path(uri).rglob("*") if p.is_file())


def drop_page_cache() -> bool:
    """Make the next read come from disk (root only; False where not allowed)."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def plain_read(uri: str, pattern: str = "shard-*.npy") -> float:
    """Seconds to read the files' bytes in order, 8 MiB at a time, doing nothing with them."""
    t0 = time.perf_counter()
    for p in sorted(Path(uri).glob(pattern)):
        with p.open("rb", buffering=0) as f:
            while f.read(8 << 20):
                pass
    return time.perf_counter() - t0


def read_back(uri: str) -> float:
    """Every shard decoded into memory: what a reader needing all of the store pays."""
    t0 = time.perf_counter()
    for _, part in logits.iter_shards(uri, logits.open_store(uri)):
        np.array(part.ids), np.array(part.values), np.array(part.indices)
    return time.perf_counter() - t0


def filter_balance(store: str, data: str, out: str) -> dict:
    """The filter-balance stage over the store (run in its own process, for its peak RSS)."""
    params = parse_params({"pseudo_labels": {"kind": "soft", "threshold": 0.3, "per_class": "median"}})
    t0 = time.perf_counter()
    total = stages.filter_balance.run(params, logits_store=store, data=data, out=out)
    seconds = time.perf_counter() - t0
    # VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork and exec
    hwm_kib = next(
        int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")
    )
    return {"seconds": seconds, "peak_rss_mib": hwm_kib / 1024, "selected": total}


def recompute_rate(classes: int, images: int = 20_000) -> float:
    """Images per second of a resnet10t teacher on 28x28 grey images here (what recomputing the logits costs)."""
    device = runtime.pick_device("auto")
    net = runtime.place(
        models.create(models.ModelSpec("resnet10t", classes, 1, 28, tuple(map(str, range(classes))))), device
    )
    x = np.random.default_rng(0).integers(0, 255, (images, 28, 28, 1), dtype=np.uint8)
    for _ in iter_logits(net, x[:1024], 512, device):  # warm-up
        pass
    t0 = time.perf_counter()
    for _ in iter_logits(net, x, 512, device):
        pass
    return images / (time.perf_counter() - t0)


def _filter_in_child(store: str, data: str, out: str) -> dict:
    artifacts.remove(out)
    child = subprocess.run(
        [sys.executable, __file__, "--filter-only", store, data, out], capture_output=True, text=True, check=True
    )
    return json.loads(child.stdout.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--topk", type=int, default=10)
    ap.add_argument("--shard", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3, help="take the best of this many runs of each timing")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument(
        "--filter-only", nargs=3, metavar=("STORE", "DATA", "OUT"), help=argparse.SUPPRESS
    )  # the child process
    args = ap.parse_args()
    if args.filter_only:
        print(json.dumps(filter_balance(*args.filter_only)))
        return
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "classes": args.classes,
        "topk": args.topk,
        "shard": args.shard,
        "repeat": args.repeat,
        "runs": [],
    }
    recompute = recompute_rate(args.classes)
    for n in args.images:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
            store, data = f"{tmp}/logits", f"{tmp}/data"
            write_s = write_store(store, n, args.classes, args.topk, args.shard, write_data(data, args.classes))
            size = store_bytes(store)
            decode_s = read_back(store)
            can_drop = drop_page_cache()

            def best(measure, from_disk: bool = False) -> float | None:
                """The best of --repeat runs (this VM's speed drifts); from_disk: each after dropping the page cache."""
                if from_disk and not can_drop:
                    return None
                return min([drop_page_cache(), measure()][1] if from_disk else measure() for _ in range(args.repeat))

            filt = min(
                (_filter_in_child(store, data, f"{tmp}/pseudo") for _ in range(args.repeat)), key=lambda f: f["seconds"]
            )
            read_s = best(lambda: plain_read(store))
            cold_read_s = best(lambda: plain_read(store), from_disk=True)
            # what the filter reads: each shard's values and class indices (of the ids, only their .npy header)
            cold_cols_s = best(
                lambda: plain_read(store, "shard-*.values.npy") + plain_read(store, "shard-*.indices.npy"),
                from_disk=True,
            )
            cold_filter_s = best(lambda: _filter_in_child(store, data, f"{tmp}/pseudo")["seconds"], from_disk=True)
            ratio = lambda read, filtered: read and filtered and round(read / filtered, 3)  # noqa: E731
            run = {
                "images": n,
                "write_s": round(write_s, 1),
                "store_bytes": size,
                "dense_fp32_bytes": n * args.classes * 4,
                "size_ratio": round(size / (n * args.classes * 4), 4),
                "plain_read_s": round(read_s, 2),
                "filter_s": round(filt["seconds"], 2),
                "read_over_filter": ratio(read_s, filt["seconds"]),
                "filter_peak_rss_mib": round(filt["peak_rss_mib"]),
                "cold_plain_read_s": cold_read_s and round(cold_read_s, 2),
                "cold_filter_s": cold_filter_s and round(cold_filter_s, 2),
                "cold_read_over_filter": ratio(cold_read_s, cold_filter_s),
                "cold_columns_read_s": cold_cols_s and round(cold_cols_s, 2),
                "cold_columns_read_over_filter": ratio(cold_cols_s, cold_filter_s),
                "selected": filt["selected"],
                "store_read_images_per_s": round(n / decode_s),
                "recompute_images_per_s": round(recompute),
                "store_over_recompute": round(n / decode_s / recompute, 1),
            }
            print(json.dumps(run), flush=True)
            results["runs"].append(run)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
