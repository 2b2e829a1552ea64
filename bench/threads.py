"""A torch training step with N threads, alone and beside a busy neighbour, as ratios against alone.

torch sizes its thread pool by the machine's cores. When another process holds one of them (a second stage, a
server, a neighbour pod on a Kubernetes node), every parallel region waits for the thread that lost its core,
and small ops are almost all parallel regions. This measures what that costs on this machine, for 1 thread and
for as many threads as cores, with the same model, batch and number of steps, beside two kinds of neighbour at
the same priority: one process spinning in Python (one core taken), and a second copy of the same training
loop with the same thread count (two stages side by side).

    python -m bench.threads [--model resnet10t] [--batch 20] [--size 28] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

STEP = """
import json, sys, time, torch, timm
torch.manual_seed(0)
model = timm.create_model(sys.argv[1], num_classes=10, in_chans=1)
x, y = torch.randn(int(sys.argv[2]), 1, int(sys.argv[3]), int(sys.argv[3])), torch.randint(0, 10, (int(sys.argv[2]),))
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
times = []
for i in range(3 + int(sys.argv[4])):
    t0 = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t0)
print(json.dumps({"threads": torch.get_num_threads(), "step_s": sorted(times[3:])[len(times[3:]) // 2]}))
"""


def neighbour(kind: str, threads: int, args: argparse.Namespace) -> subprocess.Popen:
    if kind == "spin":
        return subprocess.Popen([sys.executable, "-c", "while True: pass"])
    loop = STEP.replace("range(3 + int(sys.argv[4]))", "iter(int, 1)")  # the same step, forever
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    return subprocess.Popen(
        [sys.executable, "-c", loop, args.model, str(args.batch), str(args.size), "0"],
        env=env,
        stdout=subprocess.DEVNULL,
    )


def median_step(threads: int, args: argparse.Namespace) -> float:
    """The median step time of a fresh process with `threads` torch threads (its own interpreter, so the thread
    pool is sized from OMP_NUM_THREADS as a stage's would be)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(
        [sys.executable, "-c", STEP, args.model, str(args.batch), str(args.size), str(args.steps)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    got = json.loads(out.stdout)
    assert got["threads"] == threads
    return float(got["step_s"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet10t")
    ap.add_argument("--batch", type=int, default=20, help="the test suite's tiny batch (default: %(default)s)")
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3, help="each measurement this many times, the median kept")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    rows = []
    for threads in sorted({1, cores}):
        row = [statistics.median(median_step(threads, args) for _ in range(args.repeats))]
        for kind in ("spin", "torch"):
            busy = neighbour(kind, threads, args)
            try:
                time.sleep(8 if kind == "torch" else 0.5)  # the torch neighbour imports first
                row.append(statistics.median(median_step(threads, args) for _ in range(args.repeats)))
            finally:
                busy.kill()
                busy.wait()
        rows.append((threads, *row))
    print(
        f"{args.model}, batch {args.batch}, {args.size}x{args.size}, {cores} cores, median of {args.steps} steps x "
        f"{args.repeats}\n"
    )
    print(
        "| torch threads | step alone (s) | beside a spinning process (s) | slowdown | beside the same loop (s) | "
        "slowdown |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for threads, alone, spun, paired in rows:
        print(f"| {threads} | {alone:.3f} | {spun:.3f} | {spun / alone:.1f}x | {paired:.3f} | {paired / alone:.1f}x |")


if __name__ == "__main__":
    main()
