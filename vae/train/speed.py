"""train.precision, train.threads and train.compile: the run's arithmetic, torch's CPU threads and whether the step
is compiled, `auto` timed on the machine with the run's own step before training.

A flag says whether the hardware has bf16 products, and a core count how many threads it could run; only a
measurement says they pay: the casts around a small model's products can cost more than the products save, and
a small step can lose more to its threads' hand-offs than their cores give it; and what a compiler's fusions save
depends on the machine's kernels as much as on the step.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import shutil
import statistics
import time
from collections.abc import Iterator
from typing import NamedTuple, TypeVar

import torch

from vae.config.schema import Config
from vae.data.load import Splits
from vae.data.split import Split
from vae.model.vae import VAE
from vae.train.choose_step import compiled_graphs_dropped, make_step
from vae.train.distributed import World, all_reduce
from vae.train.optimizer import make_optimizer
from vae.train.progress import EpochProgress
from vae.train.step import Speed, Step

TIMED_ROUNDS = 5  # alternating rounds of the steps compared
ROUND_SECONDS = 0.1  # the steps of a round are as many as take about this long (at least one)
PRECISIONS = ("fp32", "bf16")
COMPILED = " compiled"  # a timed step's name: its precision, and this when it is compiled ("bf16 compiled")
K = TypeVar("K")  # what names the steps compared
# Compiling pays over enough steps only. These bounds are kinder to it than every timing (docs/benchmarks.md): it
# saves at most this share of a step, and costs at least this many seconds a step to compile (the least being with
# Inductor's kernels found in its cache). Below these bounds' savings over the run's steps, `auto` does not even
# time (and so compile) the compiled step.
COMPILE_SAVES_AT_MOST = 0.4
COMPILE_SECONDS_AT_LEAST = 0.25


def step_name(precision: str, compiled: bool) -> str:
    """How a timing names a step: 'fp32', 'bf16 compiled', ... (`precision` may be a step's name)."""
    return precision.removesuffix(COMPILED) + COMPILED * compiled


class RunLength(NamedTuple):
    """What is left of a run: its steps, and the seconds its time budget leaves (inf without one)."""

    steps: int
    seconds: float = math.inf


def choose_speed(cfg: Config, model: VAE, splits: Splits, world: World, device: torch.device,
                 state: dict | None, left: RunLength) -> Speed:
    """train.precision, train.threads and train.compile resolved, the threads set: what is `auto` is timed together,
    the fastest step taken (a checkpoint's precision stays; its threads and compiling are timed again, the machine
    may be another). Under train.compile=auto the fastest step is then timed compiled, its compiling too, where the
    run is long enough that compiling might pay (compile_may_pay), on its thread count and those that compiled might
    beat it (compile_counts), and compiled on the fastest where it pays over what is `left`."""
    # Every process times the same steps and counts: those of the one with the fewest threads, and compiled ones
    # only where every process has a C++ compiler.
    have, compiler = all_reduce(torch.tensor([torch.get_num_threads(), cxx_compiler() is not None], device=device),
                                "min").tolist()
    precisions = precisions_to_time(cfg, device, state)
    compiles = cfg.train.compile is True and bool(compiler)
    steps = tuple(step_name(p, compiles) for p in precisions)
    counts = thread_counts(cfg.train.threads, device, have)
    may_compile = cfg.train.compile == "auto" and bool(compiler)
    if len(steps) * len(counts) == 1 and not may_compile:
        torch.set_num_threads(counts[0])
        return speed_of(steps[0], counts[0])
    ms = processes_mean(step_milliseconds(cfg, model, splits, device, world.size, steps, counts), world, device)
    step, threads = fastest(ms)
    compile_seconds = None
    if may_compile and compile_may_pay(ms[step][threads], left):
        started = {}
        twins = (step, step_name(step, True))
        counts = compile_counts(ms[step], threads)
        again = processes_mean(step_milliseconds(cfg, model, splits, device, world.size, twins, counts,
                                                 started=started), world, device)
        compile_seconds = all_reduce(torch.tensor(started[twins[1]] - 2e-3 * again[twins[1]][threads],
                                                  dtype=torch.float64, device=device), "max").item()
        ms[twins[1]] = again[twins[1]]
        best = min(counts, key=again[twins[1]].get)
        if compile_pays(again[step][threads], again[twins[1]][best], compile_seconds, left):
            step, threads = twins[1], best
    torch.set_num_threads(threads)
    return speed_of(step, threads, ms, compile_seconds)


def processes_mean(ms: dict[str, dict[int, float]], world: World, device: torch.device) -> dict[str, dict[int, float]]:
    """Each timing's mean over the processes of a run under torchrun, so that all decide alike."""
    pairs = [(p, n) for p in ms for n in ms[p]]
    mean = all_reduce(torch.tensor([ms[p][n] for p, n in pairs], dtype=torch.float64, device=device)) / world.size
    by_pair = dict(zip(pairs, mean.tolist()))
    return {p: {n: by_pair[p, n] for n in ms[p]} for p in ms}


def compile_counts(plain: dict[int, float], threads: int) -> tuple[int, ...]:
    """The thread counts to time the compiled step on: `threads` (the fastest uncompiled) first, then every count whose
    uncompiled step, were compiling to save COMPILE_SAVES_AT_MOST of it, could beat that. Compiling fuses the small
    operations that a second thread's hand-offs slow down, so the uncompiled order of the counts need not hold
    compiled; and two uncompiled timings a few percent apart can swap places from one start to the next."""
    return (threads, *(n for n in plain if n != threads and plain[n] * (1 - COMPILE_SAVES_AT_MOST) < plain[threads]))


def compile_pays(plain_ms: float, compiled_ms: float, compile_seconds: float, left: RunLength) -> bool:
    """Whether the compiled step, compiling first, ends the run sooner, or takes more steps within its time budget."""
    def run(ms: float, start: float) -> tuple[float, float]:  # the steps taken, and minus the seconds they end at
        steps = min(left.steps, max(0.0, (left.seconds - start) * 1e3 / ms))
        return steps, -(start + steps * ms / 1e3)
    return run(compiled_ms, compile_seconds) > run(plain_ms, 0.0)


def compile_may_pay(plain_ms: float, left: RunLength) -> bool:
    """Whether compiling could pay over what is left of the run if it saved COMPILE_SAVES_AT_MOST of each step for
    COMPILE_SECONDS_AT_LEAST: if not, it is not worth timing (which compiles)."""
    return compile_pays(plain_ms, plain_ms * (1 - COMPILE_SAVES_AT_MOST), COMPILE_SECONDS_AT_LEAST, left)


def run_length(cfg: Config, examples: int, start: int, done: int, spent: float) -> RunLength:
    """What is left of a run from epoch `start` on `examples` training examples, `done` of that epoch's steps taken
    and `spent` seconds of its budget (train.budget_minutes) spent."""
    steps = (cfg.train.epochs - start + 1) * math.ceil(examples / cfg.train.batch_size) - done
    return RunLength(steps, cfg.train.budget_minutes * 60 - spent if cfg.train.budget_minutes else math.inf)


def speed_of(step: str, threads: int, ms: dict[str, dict[int, float]] | None = None,
             compile_seconds: float | None = None) -> Speed:
    """The Speed of the step named `step` on `threads` threads."""
    return Speed(step.startswith("bf16"), threads, ms, step.endswith(COMPILED), compile_seconds)


def fastest(ms: dict[str, dict[int, float]]) -> tuple[str, int]:
    """The (step, threads) of the fewest milliseconds."""
    return min(((p, n) for p in ms for n in ms[p]), key=lambda pair: ms[pair[0]][pair[1]])


def steps_to_time(cfg: Config, precisions: tuple[str, ...], compiler: bool | None = None) -> tuple[str, ...]:
    """The steps to time, by name: each of `precisions`, compiled and not under train.compile=auto (uncompiled only
    without a C++ compiler to build the compiled one's kernels: `compiler`, or this machine's when None)."""
    if cfg.train.compile == "auto":
        compiler = cxx_compiler() is not None if compiler is None else compiler
        compiles = (False, True) if compiler else (False,)
    else:
        compiles = (cfg.train.compile,)
    return tuple(step_name(p, c) for p in precisions for c in compiles)


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile would build its kernels with ($CXX, g++, clang++, c++); None if none is found."""
    return next((c for c in (os.environ.get("CXX", ""), "g++", "clang++", "c++") if c and shutil.which(c)), None)


def precisions_to_time(cfg: Config, device: torch.device, state: dict | None) -> tuple[str, ...]:
    """train.precision's candidates: the one asked for, the one `auto` chose for a checkpoint (it stays for the
    run's life), fp32 on a GPU without bf16, or both."""
    if cfg.train.precision != "auto":
        return (cfg.train.precision,)
    if state is not None and state["config"]["train"]["precision"] == "auto" and state.get("precision") in PRECISIONS:
        return (state["precision"],)
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return ("fp32",)
    return PRECISIONS


def thread_counts(threads: int | str, device: torch.device, have: int) -> tuple[int, ...]:
    """train.threads' candidates: the count asked for; `all`, the `have` threads this process has (torch's default
    of one per usable core, OMP_NUM_THREADS, or a sweep worker's share); `auto` on the CPU, 1, 2, 4, ... up to
    those. A GPU's step barely uses them: `auto` keeps them all there."""
    if isinstance(threads, int):
        return (threads,)
    if threads == "all" or device.type != "cpu":
        return (have,)
    return tuple(n for n in (2**i for i in range(have.bit_length())) if n < have) + (have,)


def timings_text(ms: dict[str, dict[int, float]]) -> str:
    """What `auto` timed, as a start line says it: 'fp32 on 1 thread 14.2 ms, bf16 compiled on 2 threads 9.0 ms,
    ...'."""
    return ", ".join(f"{p} on {n} thread{'s' * (n > 1)} {t:.1f} ms" for p, by in ms.items() for n, t in by.items())


@contextlib.contextmanager
def threads_kept() -> Iterator[None]:
    """torch's thread count as before the block, after it (a run sets its own; a sweep's next trial must not
    keep it)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def step_milliseconds(cfg: Config, model: VAE, splits: Splits, device: torch.device, processes: int = 1,
                      steps: tuple[str, ...] = PRECISIONS, counts: tuple[int, ...] | None = None,
                      round_seconds: float = ROUND_SECONDS, started: dict[str, float] | None = None
                      ) -> dict[str, dict[int, float]]:
    """Median milliseconds of one step at train.batch_size as each of `steps` (a precision, compiled or not: see
    step_name) on each of `counts` threads (the threads this process has when None) on this process: the run's
    step (make_step's, on a copy of the model and optimizer for each, a compiled one compiled on its threads) on
    one batch of the training images, timed by compare_steps. The run's weights, random streams and threads are
    left as they were. Of a run of several `processes`, the autograd step each would run, without the gradients'
    averaging (the same in either precision). `started`, when given, gets each step's seconds of warm-up (its
    compiling, if compiled, and two steps) on the first of `counts`."""
    if processes > 1:  # what make_step gives a run under torchrun: neither the written-out step nor a graph
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, fast_step=False, cuda_graph=False))
    counts = counts or (torch.get_num_threads(),)
    timed = {}
    for name in steps:
        for n in counts:
            net = copy.deepcopy(model)
            opt = make_optimizer(net, cfg.train)
            timed[name, n] = on_threads(make_step(cfg, net, opt, splits, World(), device, speed_of(name, n)), n)
    graphs = sum(speed_of(name, 1).compiled for name, _ in timed)
    with threads_kept(), graphs_for_each(graphs) if graphs else contextlib.nullcontext():
        warmup = {}
        ms = compare_steps(timed, splits.train, cfg.train.batch_size, cfg.loss.beta, device, round_seconds, warmup)
    if started is not None:
        started.update({p: warmup[p, counts[0]] for p in steps})
    return {p: {n: ms[p, n] for n in counts} for p in steps}


@contextlib.contextmanager
def graphs_for_each(steps: int) -> Iterator[None]:
    """torch.compile allowed a graph for each of `steps` (it guards on the thread count, the autocast state and the
    written-out step's precision, so each step timed recompiles the same code), and its caches emptied after: the run
    compiles afresh."""
    import torch._dynamo

    with torch._dynamo.config.patch(recompile_limit=steps + torch._dynamo.config.recompile_limit), \
            compiled_graphs_dropped(True):
        yield


def on_threads(step: Step, threads: int) -> Step:
    """`step` run on `threads` of torch's threads."""
    def run(*args) -> None:
        torch.set_num_threads(threads)
        step(*args)
    return run


def compare_steps(steps: dict[K, Step], train: Split, batch_size: int, kl_weight: float, device: torch.device,
                  round_seconds: float = ROUND_SECONDS, warmup: dict[K, float] | None = None) -> dict[K, float]:
    """Median milliseconds of each of `steps` on one batch of `train`, timed in TIMED_ROUNDS alternating rounds
    of about `round_seconds` (so that a drift of the machine's speed hits all alike) after two steps of
    warm-up each (a compiled step compiles in them; `warmup`, when given, gets their seconds) and one that sizes
    the rounds. Their random numbers come from a generator of their own."""
    gen = torch.Generator(device=device).manual_seed(0)
    index = torch.randperm(len(train), generator=gen, device=device)[:batch_size]
    tally = EpochProgress.begin(len(index), gen)  # the steps count into a scratch tally

    def seconds(step: Step, n: int) -> float:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            step(index, gen, kl_weight, tally)
        sync(device)
        return (time.perf_counter() - t0) / n

    for name, step in steps.items():
        started = 2 * seconds(step, 2)
        if warmup is not None:
            warmup[name] = started
    n = max(1, round(round_seconds / max(seconds(step, 1) for step in steps.values())))
    rounds = {name: [] for name in steps}
    for _ in range(TIMED_ROUNDS):
        for name, step in steps.items():
            rounds[name].append(seconds(step, n))
    return {name: 1e3 * statistics.median(times) for name, times in rounds.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
