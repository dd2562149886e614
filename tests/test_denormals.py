"""Subnormal numbers flushed to zero on every thread torch computes on (vae/denormals.py), and what it changes."""
import contextlib
import platform
import subprocess
import sys

import pytest
import torch
from conftest import REPO, with_

import vae.train.loop
from vae.denormals import flushed_denormals
from vae.train.loop import train

pytestmark = pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                                reason="flush-to-zero and denormals-are-zero are x86's flags")
TINY = torch.finfo(torch.float32).tiny  # the smallest normal float32, 2^-126


@pytest.fixture
def threads():
    """torch on two threads for the test (on a 1-core machine too: the flags are per thread, not per core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield 2
    torch.set_num_threads(before)


def smallest_subnormals(threads: int) -> torch.Tensor:
    """The smallest subnormal float32, 2^-149 (made from its bits, as no arithmetic under the flags could), over
    enough elements that each of the `threads` threads takes its share of an op on them."""
    return torch.ones(threads * 2**16, dtype=torch.int32).view(torch.float32)


def tripled(x: torch.Tensor) -> torch.Tensor:
    """3 x (subnormal, or zero where flushed), as bits: so that no comparison reads them flushed."""
    return (x * 3.0).view(torch.int32)


def test_subnormals_are_zeros_on_every_thread_inside_and_as_before_after(threads):
    x = smallest_subnormals(threads)
    halves = lambda bits: [bool((half == 0).all()) for half in bits.chunk(threads)]  # noqa: E731 - thread t's share
    assert halves(tripled(x)) == [False, False]  # IEEE's subnormals, on each thread
    torch.set_flush_denormal(True)
    try:  # torch's flag alone: the calling thread's share flushed, the other thread's not
        assert halves(tripled(x)) == [True, False]
    finally:
        torch.set_flush_denormal(False)
    with flushed_denormals():
        assert halves(tripled(x)) == [True, True]
        torch.set_num_threads(1)
        torch.set_num_threads(threads)
        assert halves(tripled(x)) == [True, True]
    assert halves(tripled(x)) == [False, False]


def test_threads_started_inside_inherit_the_flags():
    """In a process whose OpenMP has started one thread: the second, started inside the block, is flushed too."""
    code = ("import torch; from vae.denormals import flushed_denormals; torch.set_num_threads(1); "
            "x = torch.ones(2**17, dtype=torch.int32).view(torch.float32); x * 3.0\n"
            "with flushed_denormals():\n"
            "    torch.set_num_threads(2); print(bool(((x * 3.0).view(torch.int32) == 0).all()))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["True"], result.stderr


def test_torch_compiles_kernels_run_flushed(threads):
    """A compiled step's kernels run on the same OpenMP threads (and its parallel loops split as torch's do)."""
    torch._dynamo.reset()
    compiled = torch.compile(tripled)
    x = smallest_subnormals(threads)
    halves = lambda bits: [bool((half == 0).all()) for half in bits.chunk(threads)]  # noqa: E731 - thread t's share
    assert halves(compiled(x)) == [False, False]
    torch.set_flush_denormal(True)
    try:  # torch's flag alone: the compiled kernel's second thread computes unflushed
        assert halves(compiled(x)) == [True, False]
    finally:
        torch.set_flush_denormal(False)
    with flushed_denormals():
        assert halves(compiled(x)) == [True, True]
    torch._dynamo.reset()


def test_adam_on_gradients_whose_squares_are_subnormal_steps_the_same_flushed(threads):
    """Gradients of 1e-21 (their squares, 1e-42, subnormal in float32): unflushed Adam keeps them in its second
    moment, flushed it keeps zeros, and its steps agree to float32's rounding: beside Adam's eps of 1e-8 a square
    root of 1e-21 changes nothing."""
    weights = {}
    for flush in (False, True):
        w = torch.nn.Parameter(torch.zeros(threads * 2**16))
        adam = torch.optim.Adam([w], lr=1e-3, fused=True)
        with flushed_denormals() if flush else contextlib.nullcontext():
            for _ in range(3):
                w.grad = torch.full_like(w, 1e-21)
                adam.step()
        v = adam.state[w]["exp_avg_sq"]
        assert bool((v == 0).all() if flush else ((v > 0) & (v < TINY)).all())  # all flushed, or all subnormal
        weights[flush] = w.detach()
    torch.testing.assert_close(weights[True], weights[False], rtol=2 * torch.finfo(torch.float32).eps, atol=0)
    assert bool((weights[True] < 0).all())  # they did step


def test_a_run_flushed_trains_as_one_not_flushed(tiny_cfg, tmp_path, monkeypatch):
    """Two epochs of the mixture prior's run, flushed (as train() runs) and not: the same losses to float32's
    rounding; a subnormal flushed is under 2^-126 of any sum it joins."""
    cfg = with_(tiny_cfg, model={"prior": "mog", "prior_components": 50}, train={"epochs": 2})
    flushed = train(with_(cfg, output={"dir": str(tmp_path / "flushed")}))
    monkeypatch.setattr(vae.train.loop, "flushed_denormals", contextlib.nullcontext)
    kept = train(with_(cfg, output={"dir": str(tmp_path / "kept")}))
    for a, b in zip(flushed.rows, kept.rows):
        for key in ("train_loss", "test_loss", "test_recon", "test_kl"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-6), key
