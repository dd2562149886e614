"""Is arithmetic on tiny numbers slow here, and is it under the project's setting? Denormal-heavy tensor ops timed
with subnormals kept (IEEE's default) and flushed as training and evaluation run (vae/denormals.py), on one thread
and on all, alternated in one process; and exp() of far-negative numbers against exp_or_zero.

    python -m bench.denormals [--reps 5]

The ops are those a trained model meets: products and sums of subnormal float32 numbers (Adam's moments of pixels
that are almost always off), F.softplus of logits around -60 (a trained decoder's background) and exp() of numbers
below -87 (a mixture prior's far-off responsibilities). Prints milliseconds and the ratios kept / flushed (on some
Intel cores subnormals take microcode, tens of times slower; AMD's cores measured no slower) and exp / exp_or_zero
(a slow path of the vectorized exp, flushed or not).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from vae.denormals import flushed_denormals
from vae.model.distributions import exp_or_zero

SHAPE = (25_000, 784)  # the test set's pixels


def milliseconds(op, reps: int) -> float:
    op()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        op()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="timed calls of each op (the median is printed)")
    args = parser.parse_args()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, {threads} threads",
          flush=True)
    subnormal = torch.full(SHAPE, 2**20, dtype=torch.int32).view(torch.float32)  # 2^-129, from its bits
    logits, far = torch.full(SHAPE, -60.0), torch.full(SHAPE, -95.0)
    ops = {"subnormal * 0.5 + subnormal": lambda: subnormal * 0.5 + subnormal,
           "sum of subnormal squares": lambda: subnormal.mul(subnormal.sqrt()).sum(),
           "softplus(-60)": lambda: F.softplus(logits),
           "exp(-95)": lambda: torch.exp(far)}
    for n in sorted({1, threads}):
        torch.set_num_threads(n)
        for name, op in ops.items():
            kept, flushed = [], []
            for _ in range(2):  # alternated
                kept.append(milliseconds(op, args.reps))
                with flushed_denormals():
                    flushed.append(milliseconds(op, args.reps))
            k, f = min(kept), min(flushed)
            print(f"{n} thread{'s' * (n > 1)}: {name:<28} kept {k:8.1f} ms, flushed {f:8.1f} ms: {k / f:5.2f}x",
                  flush=True)
        with flushed_denormals():
            plain, ours = milliseconds(lambda: torch.exp(far), args.reps), milliseconds(lambda: exp_or_zero(far),
                                                                                      args.reps)
        print(f"{n} thread{'s' * (n > 1)}: exp(-95) {plain:.1f} ms, exp_or_zero(-95) {ours:.1f} ms: "
              f"{plain / ours:.1f}x", flush=True)
    torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
