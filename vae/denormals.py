"""Flush-to-zero and denormals-are-zero on every thread that computes on the CPU.

As a model trains, some float32 values fall below the smallest normal number, 1.2e-38: a mixture prior's far-off
responsibilities, Adam's moments of pixels that are almost always off, products of tiny probabilities. Some CPUs
(Intel's) compute on such subnormal numbers in microcode, tens of times slower, and a run's epochs slowed several
times over as it trained (docs/benchmarks.md); AMD's cores measured no slower. Flushed, they are zeros, which changes
no loss or gradient by a float32-visible amount (they are 1e-30 of any term they are added to).

torch.set_flush_denormal sets the flag of the calling thread only, and torch's other intra-op threads (OpenMP's,
shared by torch's kernels, MKL, oneDNN and torch.compile's kernels) keep computing with subnormals. So every thread
of OpenMP's team loads the calling thread's floating-point environment (fegetenv, then fesetenv in one parallel
region); a thread that OpenMP starts later inherits it from the thread that starts it, as POSIX threads do.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import platform
import re
from collections.abc import Iterator

import torch

FENV_BYTES = 64  # room for glibc's fenv_t (32 bytes on x86-64)
OPENMP = re.compile(r"lib(g|i|i5)?omp[^/]*\.so[.\d]*$")  # libgomp.so.1 (torch's wheels), libomp.so, libiomp5.so


def openmp_libraries() -> list[str]:
    """The OpenMP runtimes loaded in this process (Linux: from /proc/self/maps; none found elsewhere)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split(maxsplit=5)[5].strip() for line in f if line.count(" ") >= 5 and "/" in line}
    except (OSError, IndexError):
        return []
    return sorted(p for p in paths if OPENMP.search(p))


@functools.cache
def libm() -> ctypes.CDLL | None:
    """The C maths library, whose fegetenv and fesetenv read and write a thread's flags: on x86-64; else None."""
    name = ctypes.util.find_library("m") if platform.machine().lower() in ("x86_64", "amd64") else None
    lib = ctypes.CDLL(name) if name else None
    return lib if lib is not None and hasattr(lib, "fegetenv") else None


def set_environment_everywhere(env: ctypes.Array) -> None:
    """fesetenv(env), the whole floating-point environment (SSE's flags and x87's), on this thread and on each of
    torch's OpenMP threads."""
    math = libm()
    math.fesetenv(env)
    fesetenv = ctypes.cast(math.fesetenv, ctypes.c_void_p)
    for path in openmp_libraries():
        runtime = ctypes.CDLL(path)
        parallel = getattr(runtime, "GOMP_parallel", None)  # libomp and libiomp5 have it too
        if parallel is None:
            continue
        # GOMP_parallel(fn, data, num_threads, flags): fn(data) on each of the team's threads, this one included
        parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        parallel.restype = None
        parallel(fesetenv, ctypes.cast(env, ctypes.c_void_p), torch.get_num_threads(), 0)


@contextlib.contextmanager
def flushed_denormals() -> Iterator[None]:
    """Subnormal float32 and float64 values flushed to zero (FTZ and DAZ) inside the block on every thread torch
    computes on: its threads at the start (torch.get_num_threads()) and those started inside; the floating-point
    environment as before it, after. Also a decorator. Nothing changes on a CPU without the flags (not x86) or
    without glibc's fegetenv."""
    math = libm()
    if math is None:
        yield
        return
    before, flushed = ctypes.create_string_buffer(FENV_BYTES), ctypes.create_string_buffer(FENV_BYTES)
    math.fegetenv(before)
    has_flags = torch.set_flush_denormal(True)  # this thread's, where the CPU has them
    math.fegetenv(flushed)
    if has_flags:
        set_environment_everywhere(flushed)
    try:
        yield
    finally:
        if has_flags:
            set_environment_everywhere(before)

