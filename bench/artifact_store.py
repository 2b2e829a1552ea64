"""Logit store write/read throughput on an S3 endpoint vs local disk, as ratios.

The same synthetic logits (N images x C classes, dense float16 or top-k) go through the logit
store's own writer (`LogitWriter`, inside an atomic artifact directory) and reader (`read_store`)
to a local directory and to `s3://` on a loopback `moto_server` started here (or the endpoint in
AWS_ENDPOINT_URL with --endpoint-from-env). Throughput is stored bytes per second; the ratio is
S3 / local, measured alternately in the same run (--repeat).

    python -m bench.artifact_store [--images 200000] [--classes 1000] [--topk 10] [--shard 50000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

from selftrain import artifacts, logits


def start_moto() -> subprocess.Popen:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            time.sleep(0.2)
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    return proc


def write_store(
    uri: str, chunks: list[tuple[np.ndarray, torch.Tensor]], classes: int, topk: int | None, shard: int
) -> float:
    t = time.perf_counter()
    with artifacts.atomic_dir(uri) as staging:
        w = logits.LogitWriter(staging, classes, topk, shard, "0" * 64, "1" * 64)
        for ids, x in chunks:
            w.add(ids, x)
        w.close()
    return time.perf_counter() - t


def read_store(uri: str) -> float:
    t = time.perf_counter()
    logits.read_store(uri)
    return time.perf_counter() - t


def stored_bytes(uri: str) -> int:
    fs, path = artifacts.uris._fs(uri)
    return sum(fs.size(f) for f in fs.find(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=200_000)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--topk", type=int, default=10, help="0 for dense float16")
    ap.add_argument("--shard", type=int, default=50_000, help="rows per shard")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--endpoint-from-env", action="store_true", help="use the S3 endpoint and credentials of the AWS environment"
    )
    ap.add_argument("--out", default="bench/results/artifact_store.json")
    args = ap.parse_args()
    topk = args.topk or None
    moto = None if args.endpoint_from_env else start_moto()
    import s3fs

    bucket = "selftrain-bench"
    fs = s3fs.S3FileSystem()
    if not fs.exists(bucket):
        fs.mkdir(bucket)
    gen = torch.Generator().manual_seed(0)
    batch = 10_000
    chunks = [
        (
            np.array([f"img{i:09d}" for i in range(s, min(s + batch, args.images))]),
            torch.randn(min(batch, args.images - s), args.classes, generator=gen),
        )
        for s in range(0, args.images, batch)
    ]
    results = {"local": {"write_s": [], "read_s": []}, "s3": {"write_s": [], "read_s": []}}
    with tempfile.TemporaryDirectory() as tmp:
        targets = {"local": str(Path(tmp) / "logits"), "s3": f"s3://{bucket}/logits"}
        for r in range(args.repeat):
            for kind in ("local", "s3") if r % 2 == 0 else ("s3", "local"):
                results[kind]["write_s"].append(write_store(targets[kind], chunks, args.classes, topk, args.shard))
                results[kind]["read_s"].append(read_store(targets[kind]))
        size = stored_bytes(targets["local"])
        if artifacts.content_hash(targets["local"]) != artifacts.content_hash(targets["s3"]):
            raise SystemExit("the S3 store differs from the local one")
    if moto:
        moto.terminate()
    best = {k: {op: min(v[op]) for op in v} for k, v in results.items()}
    mb = size / 1e6
    summary = {
        "command": " ".join(["python", *sys.argv]),
        "images": args.images,
        "classes": args.classes,
        "topk": topk,
        "shard_rows": args.shard,
        "stored_mb": round(mb, 1),
        "local_write_mb_s": round(mb / best["local"]["write_s"], 1),
        "local_read_mb_s": round(mb / best["local"]["read_s"], 1),
        "s3_write_mb_s": round(mb / best["s3"]["write_s"], 1),
        "s3_read_mb_s": round(mb / best["s3"]["read_s"], 1),
        "write_ratio_s3_vs_local": round(best["local"]["write_s"] / best["s3"]["write_s"], 3),
        "read_ratio_s3_vs_local": round(best["local"]["read_s"] / best["s3"]["read_s"], 3),
        "runs": results,
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "endpoint": "moto_server on loopback" if moto else "AWS_ENDPOINT_URL",
        },
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
