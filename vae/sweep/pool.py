"""The local process pool: N worker processes on one machine, each with its share of the cores, held
by one sweep command at a time, and ending with it."""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

from vae.cli import INVOKED_AS, invocation_style
from vae.errors import Interrupted, UserError
from vae.files import locked
from vae.sweep.spec import load
from vae.sweep.worker import resume, work

PATH_ENV = "PYTHONPATH"
PARENT_ENV = "VAE_SWEEP_PARENT"  # a worker's parent's pid: the worker stops when that process is gone
PR_SET_PDEATHSIG = 1  # Linux prctl(2): the signal this process gets when its parent dies


def usable_cores() -> int:
    """The cores this process may run on: those of its CPU affinity (taskset, a cgroup's cpuset), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    return max(1, usable_cores() // workers)


def configure_worker(workers: int) -> None:
    """A worker process: it gets SIGTERM when the sweep that started it dies (and so saves its trial and stops,
    vae/sweep/stop.py), and its share of the cores' torch threads, so that N workers do not oversubscribe them.

    torch (and the training code) is imported only in the processes that train: the parent of N
    workers never does, which saves seconds of imports before they start.
    """
    parent = int(os.environ.get(PARENT_ENV, "0"))
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent and os.getppid() != parent:  # the parent died before the line above
        raise Interrupted(signal.SIGTERM, "the sweep that started this worker is gone: stopped")
    import torch
    torch.set_num_threads(threads_per_worker(workers))


def run_workers(sweep_dir: Path, workers: int, command: tuple[str, ...] = ("-m", "vae", "sweep")) -> None:
    """Run the sweep with `workers` local processes (one in this process when 1), each with its share of
    the cores, each `python COMMAND --worker ...` (this package's sweep command). Ctrl-C or SIGTERM stops every
    worker after its current step, each saving its trial; a second sweep on the same directory is refused
    while this one runs."""
    sweep = load(sweep_dir)
    with locked(sweep_dir, f"{sweep_dir} is being run by another sweep on this machine{{pid}}: wait for it, "
                           f"or stop it first"):
        if workers == 1:
            work(sweep, sweep_dir)
            return
        cmd = [sys.executable, *command, "--worker", str(sweep_dir), "--workers", str(workers)]
        # this very package, installed or not: the folder that holds vae/
        path = os.pathsep.join([str(Path(__file__).resolve().parents[2]), *filter(None, [os.environ.get(PATH_ENV)])])
        # the workers' hints name the command the user ran, not theirs (python -m vae sweep --worker)
        env = {**os.environ, PARENT_ENV: str(os.getpid()), PATH_ENV: path, INVOKED_AS: invocation_style()}
        # Their own sessions: a terminal's Ctrl-C reaches this process alone, which passes it on once.
        procs = [subprocess.Popen(cmd, env=env, start_new_session=True) for _ in range(workers)]
        codes = wait_for(procs)
    stops = {128 + signal.SIGINT: signal.SIGINT, 128 + signal.SIGTERM: signal.SIGTERM,
             -signal.SIGINT: signal.SIGINT, -signal.SIGTERM: signal.SIGTERM}  # saved and stopped, or stopped idle
    interrupted = [stops[c] for c in codes if c in stops]
    if interrupted:
        raise Interrupted(interrupted[0], f"sweep stopped; continue with: {resume(sweep_dir)}")
    failed = [c for c in codes if c]
    if failed:
        how = f"was killed by {signal.Signals(-failed[0]).name}" if failed[0] < 0 else f"exited with status {failed[0]}"
        raise UserError(f"a sweep worker {how}; continue with: {resume(sweep_dir)}")


def wait_for(procs: list[subprocess.Popen]) -> list[int]:
    """Their exit codes (-N: killed by signal N). A SIGINT (Ctrl-C) or SIGTERM to this process is passed on
    to each of them, which saves its trial and stops (a second one stops them at once)."""
    def forward(signum, frame):
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return [proc.wait() for proc in procs]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
