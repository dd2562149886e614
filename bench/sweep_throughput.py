"""Sweep throughput, side by side: models x epochs per hour with N one-thread workers against one
worker with N threads, on the same grid of the default model.

    python -m bench.sweep_throughput --data ../shared/data [--points 4] [--epochs 2] [--workers 2] [--repeats 2]

Each sweep is a fresh `sweep.py` process in a temporary directory; the wall time includes its
start (imports, data loading), as a user's sweep does.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vae.sweep.pool import threads_per_worker  # the share each worker gets, as sweep.py gives it

REPO = Path(__file__).resolve().parent.parent


def timed_sweep(folder: Path, data: str, points: int, epochs: int, workers: int) -> float:
    cmd = [sys.executable, str(REPO / "sweep.py"), "--config", str(REPO / "configs" / "mnist.yaml"),
           f"data.root={data}", f"train.epochs={epochs}", "train.device=cpu", "viz.every=1000",
           "--grid", "train.seed=" + ",".join(str(s) for s in range(points)), "--workers", str(workers),
           "--dir", str(folder / f"workers{workers}")]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return round(time.perf_counter() - t0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="folder holding MNIST/raw/")
    parser.add_argument("--points", type=int, default=4, help="grid points (seeds of the default model)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="sweeps of each kind, in alternating order")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {args.points} models x "
          f"{args.epochs} epochs of configs/mnist.yaml per sweep")
    times = {1: [], args.workers: []}
    for repeat in range(args.repeats):  # alternate the order: this machine's speed drifts
        for workers in ((1, args.workers) if repeat % 2 == 0 else (args.workers, 1)):
            with tempfile.TemporaryDirectory() as tmp:
                times[workers].append(timed_sweep(Path(tmp), args.data, args.points, args.epochs, workers))
    one, many = (statistics.median(times[w]) for w in (1, args.workers))
    work = args.points * args.epochs * 3600
    print(f"--workers 1 ({os.cpu_count()} threads): median {one:7.1f} s of {times[1]}, "
          f"{work / one:6.0f} models x epochs per hour")
    print(f"--workers {args.workers} ({threads_per_worker(args.workers)} thread each): median "
          f"{many:7.1f} s of {times[args.workers]}, {work / many:6.0f} models x epochs per hour")
    print(f"ratio (workers {args.workers} / workers 1): {one / many:.2f}x")


if __name__ == "__main__":
    main()
