"""The local process pool: N worker processes on one machine, each with its share of the cores."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from vae.errors import Interrupted, UserError
from vae.sweep.spec import load
from vae.sweep.study import work


def usable_cores() -> int:
    """The cores this process may run on: those of its CPU affinity (taskset, a cgroup's cpuset), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    return max(1, usable_cores() // workers)


def configure_worker(workers: int) -> None:
    """A worker process's torch threads: its share of the cores, so that N workers do not oversubscribe them.

    torch (and the training code) is imported only in the processes that train: the parent of N
    workers never does, which saves its 4 s of imports (measured, 2-core CPU) before they start.
    """
    import torch
    torch.set_num_threads(threads_per_worker(workers))


def run_workers(sweep_dir: Path, workers: int, script: Path) -> None:
    """Run the sweep with `workers` local processes (one in this process when 1), each with its
    share of the cores; Ctrl-C stops every worker after its current step, each saving its trial."""
    sweep = load(sweep_dir)
    if workers == 1:
        work(sweep, sweep_dir)
        return
    cmd = [sys.executable, str(script), "--worker", str(sweep_dir), "--workers", str(workers)]
    procs = [subprocess.Popen(cmd) for _ in range(workers)]
    codes = []
    for proc in procs:
        while True:
            try:
                codes.append(proc.wait())
                break
            except KeyboardInterrupt:  # the workers got it too: wait for them to save
                continue
    interrupted = [c for c in codes if c in (128 + signal.SIGINT, 128 + signal.SIGTERM)]
    if interrupted:
        raise Interrupted(interrupted[0] - 128, f"sweep stopped; continue with: python sweep.py --resume {sweep_dir}")
    if any(codes):
        raise UserError(f"a sweep worker exited with status {max(codes)}; continue with: "
                        f"python sweep.py --resume {sweep_dir}")
