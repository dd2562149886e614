"""The benchmarks keep working: bench/speed.py (two epochs of both loops and one fast setting on the synthetic
data), bench/bf16_step.py and bench/step_speed.py, asserted on the numbers they return."""
import json

import pytest
import torch

import bench.auto_choice
from bench.auto_choice import choices
from bench.bf16_step import step_timings
from bench.default_run import default_run
from bench.late_epochs import epoch_seconds
from bench.layer_steps import layer_steps
from bench.speed import benchmark
from bench.step_speed import steps_compared
from vae.config.schema import Config
from vae.train.step import Speed

FP32 = ("train.precision=fp32", "train.compile=false")  # the default model's step in fp32, uncompiled

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
    result = steps_compared("mnist", images=256, round_seconds=0.001, overrides=FP32)
    assert set(result["ms"]) == {"as filed", "ours"} and all(ms > 0 for ms in result["ms"].values())
    assert result["precision"] == {"as filed": "fp32", "ours": "fp32"}  # as asked


def test_layer_steps_benchmark_times_the_one_layer_and_the_ladder_step_side_by_side():
    ms = layer_steps(["mnist_cpu_hour", "mnist_cpu_hour2"], Speed(False, 1), images=256, round_seconds=0.001)
    assert set(ms) == {"mnist_cpu_hour", "mnist_cpu_hour2"} and all(t > 0 for t in ms.values())


def test_auto_choice_benchmark_times_every_precision_on_every_thread_count_twice(monkeypatch):
    monkeypatch.setattr(bench.auto_choice, "LONGER", 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        result = choices("mnist", images=256, overrides=("train.compile=false",))
        assert torch.get_num_threads() == 2  # the timing gives the threads back
    finally:
        torch.set_num_threads(threads)
    assert set(result) == {"auto", "long"}
    for ms in result.values():
        assert {p: set(by) for p, by in ms.items()} == {"fp32": {1, 2}, "bf16": {1, 2}}
        assert all(t > 0 for by in ms.values() for t in by.values())


def test_default_run_benchmark_trains_the_default_config_as_make_train_runs_it(mnist_root, tmp_path):
    rows, seconds, info = default_run(str(mnist_root), str(tmp_path / "run"), "cpu", ["train.epochs=2"])
    assert [r["epoch"] for r in rows] == [1, 2] and seconds >= sum(r["seconds"] for r in rows) > 0
    assert info["precision"] in ("fp32", "bf16") and "step_ms" in info  # `auto` timed it


def test_late_epochs_benchmark_runs_the_hour_config_fresh_and_resumed_as_before_and_now(mnist_root, tmp_path):
    fresh, info = epoch_seconds(str(mnist_root), None, 2, str(tmp_path / "early"), [], before=True)
    late, _ = epoch_seconds(str(mnist_root), str(tmp_path / "early"), 2, str(tmp_path / "late"),
                            [f"train.precision={info['precision']}", "train.threads=1"], before=False)
    assert len(fresh) == len(late) == 1 and min(fresh + late) > 0  # each run's second epoch
    assert json.loads((tmp_path / "late" / "run.json").read_text())["threads"] == 1
