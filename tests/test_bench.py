"""The benchmarks keep working: bench/speed.py (two epochs of both loops and one fast setting on the synthetic
data), bench/bf16_step.py and bench/step_speed.py, asserted on the numbers they return."""
import pytest
import torch

import bench.auto_choice
from bench.auto_choice import choices
from bench.bf16_step import step_timings
from bench.speed import benchmark
from bench.step_speed import steps_compared
from vae.config.schema import Config

pytestmark = pytest.mark.slow  # trains both loops: skipped by pytest -m "not slow"


def test_speed_benchmark_times_both_loops_and_their_ratio(mnist_root):
    result = benchmark(str(mnist_root), 2, torch.device("cpu"), fast=["64:2e-3"])
    assert set(result["loops"]) == {"reference", "ours", "ours 64:2e-3"}
    assert result["floor"]["fp32"] > 0 and result["floor"]["bf16"] > 0
    for s in result["loops"].values():
        assert s["final"] < 400  # both learn: from ~543 nats at the start
        assert s["epochs"] == 2 and s["train_s"] > 0 and s["peak_bytes"] >= 0
        assert s["samples_per_s"] == pytest.approx(result["examples"] / s["train_s"])
    ratio, loops = result["ratio"], result["loops"]
    assert ratio["train"] == pytest.approx(loops["reference"]["train_s"] / loops["ours"]["train_s"])
    assert ratio["same_loss"] == (abs(loops["reference"]["final"] - loops["ours"]["final"]) <= 0.5)


def test_bf16_step_benchmark_times_both_precisions_for_each_batch():
    rows = step_timings(Config(), [4, 8], steps=1)
    assert [(r["batch"], r["what"]) for r in rows] == [(4, "step"), (4, "first mm"), (8, "step"), (8, "first mm")]
    assert all(r["fp32_ms"] > 0 and r["bf16_ms"] > 0 for r in rows)


def test_step_speed_benchmark_times_the_step_as_filed_and_ours():
    result = steps_compared("mnist", images=256, round_seconds=0.001)
    assert set(result["ms"]) == {"as filed", "ours"} and all(ms > 0 for ms in result["ms"].values())
    assert result["precision"] == {"as filed": "fp32", "ours": "fp32"}  # mnist.yaml asks for fp32


def test_auto_choice_benchmark_times_every_precision_on_every_thread_count_twice(monkeypatch):
    monkeypatch.setattr(bench.auto_choice, "LONGER", 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = choices("mnist", images=256)
        assert torch.get_num_threads() == 2  # the timing gives the threads back
    finally:
        torch.set_num_threads(threads)
    assert set(result) == {"auto", "long"}
    for ms in result.values():
        assert {p: set(by) for p, by in ms.items()} == {"fp32": {1, 2}, "bf16": {1, 2}}
        assert all(t > 0 for by in ms.values() for t in by.values())
