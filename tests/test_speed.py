"""train.precision and train.threads: `auto` times the run's own step on the machine and trains on the fastest."""
import json
import time

import pytest
import torch
from conftest import on_each_step, with_, without_timing

import vae.train.speed
from vae.config.schema import Config
from vae.data.load import load_data
from vae.data.split import Split
from vae.model.vae import build_model
from vae.train.distributed import World
from vae.train.loop import train
from vae.train.speed import PRECISIONS, RunLength, compare_steps, compile_pays, fastest, run_length, thread_counts

COUNTS = (1, 2, 4)  # what `auto` times with four threads


@pytest.fixture
def four_threads():
    """torch on four threads for the test, as on a 4-core machine (as it was after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(threads)


def timed(table: dict[str, dict[int, float]], compile_seconds: float = 0.0, asked: list | None = None):
    """A stand-in for step_milliseconds: `table`'s milliseconds of what it is asked to time (noted in `asked`), a
    compiled step's warm-up taking `compile_seconds` more than two steps."""
    def step_milliseconds(cfg, model, splits, device, processes, steps, counts, started=None):
        if asked is not None:
            asked.extend(steps)
        if started is not None:
            started.update({p: compile_seconds * p.endswith("compiled") + 2e-3 * table[p][counts[0]] for p in steps})
        return {p: {n: table[p][n] for n in counts} for p in steps}
    return step_milliseconds


@pytest.fixture
def compiling_always_might_pay(monkeypatch):
    """`auto` times the compiled step however short the run (the tests' are a few steps)."""
    monkeypatch.setattr(vae.train.speed, "COMPILE_SECONDS_AT_LEAST", 0.0)


def threads_seen(monkeypatch) -> set[int]:
    """torch's threads at each training step of the next train()."""
    seen = set()

    def hook(step, *args):
        seen.add(torch.get_num_threads())
        step(*args)
    on_each_step(monkeypatch, hook)
    return seen


def run_info(result) -> dict:
    return json.loads((result.run_dir / "run.json").read_text())


def test_thread_counts_are_the_powers_of_two_below_the_threads_the_process_has_and_those():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    for have, auto in ((1, (1,)), (2, (1, 2)), (6, (1, 2, 4, 6)), (16, (1, 2, 4, 8, 16))):
        assert thread_counts("auto", cpu, have) == auto
        assert thread_counts("all", cpu, have) == thread_counts("auto", gpu, have) == (have,)
        assert thread_counts(3, cpu, have) == thread_counts(3, gpu, have) == (3,)


def test_a_slow_start_such_as_compiling_neither_counts_nor_shrinks_the_timed_rounds():
    """Each step's first two calls (a compiled step's compiling) take 50 ms, the later 1 ms: the timing is of the
    later, and its rounds hold many steps, not one."""
    calls = {"slow": 0, "fast": 0}

    def step(name: str):
        def run(*args) -> None:
            calls[name] += 1
            time.sleep(0.05 if calls[name] <= 2 else 0.001)
        return run
    split = Split(torch.zeros(8, 1, 28, 28, dtype=torch.uint8), torch.zeros(8, dtype=torch.long), ("0",))
    ms = compare_steps({"slow": step("slow"), "fast": step("fast")}, split, 4, 1.0, torch.device("cpu"), 0.02)
    assert all(1.0 <= v < 25.0 for v in ms.values())  # sleep(0.001) takes a millisecond at least, not 50
    assert all(n > 2 + 1 + 5 * 2 for n in calls.values())  # warm-up, sizing, then five rounds of several steps


def test_fastest_is_the_pair_of_fewest_milliseconds_across_precisions_and_counts():
    assert fastest({"fp32": {1: 3.0, 2: 1.0}, "bf16": {1: 2.0, 2: 1.5}}) == ("fp32", 2)
    assert fastest({"fp32": {1: 3.0, 2: 2.5}, "bf16": {1: 0.9, 2: 1.5}}) == ("bf16", 1)


def test_each_step_timed_runs_on_its_own_thread_count_and_the_threads_are_given_back(tiny_cfg, monkeypatch,
                                                                                     four_threads):
    seen = {}

    def make_step(cfg, net, opt, splits, world, device, speed):
        def step(index, gen, kl_weight, progress):
            seen.setdefault(id(net), (speed.bf16, set()))[1].add(torch.get_num_threads())
        return step
    monkeypatch.setattr(vae.train.speed, "make_step", make_step)
    splits = load_data(tiny_cfg.data, torch.device("cpu"))
    ms = vae.train.speed.step_milliseconds(tiny_cfg, build_model(tiny_cfg.model), splits, torch.device("cpu"),
                                          counts=COUNTS, round_seconds=1e-3)
    assert {p: set(by) for p, by in ms.items()} == {p: set(COUNTS) for p in PRECISIONS}
    # a copy of the step for each pair, each only ever run on its count
    assert sorted((bf16, tuple(n)) for bf16, n in seen.values()) == [(b, (n,)) for b in (False, True) for n in COUNTS]
    assert torch.get_num_threads() == 4


def test_auto_times_every_pair_on_copies_and_the_run_is_the_one_its_choice_makes(tiny_cfg, tmp_path, four_threads):
    auto = train(with_(tiny_cfg, train={"precision": "auto", "threads": "auto"}, output={"dir": str(tmp_path / "a")}))
    info = run_info(auto)
    ms = info["step_ms"]
    assert set(ms) == set(PRECISIONS) and all(set(by) == {"1", "2", "4"} for by in ms.values())
    assert all(t > 0 for by in ms.values() for t in by.values())
    fastest = min(((p, n) for p in ms for n in ms[p]), key=lambda pair: ms[pair[0]][pair[1]])
    assert (info["precision"], str(info["threads"])) == fastest
    assert torch.get_num_threads() == 4  # given back
    # the timing ran on copies, with its own random numbers: the run is the one its choice makes when asked for
    explicit = train(with_(tiny_cfg, train={"precision": info["precision"], "threads": info["threads"]},
                           output={"dir": str(tmp_path / "b")}))
    assert without_timing(auto.rows) == without_timing(explicit.rows)


def test_auto_compile_times_the_fastest_step_compiled_and_the_run_is_the_one_its_choice_makes(
        tiny_cfg, tmp_path, capsys, compiling_always_might_pay):
    """The written-out step timed in fp32 and bf16, then the faster compiled, its compiling timed too: over the
    run's 20 steps it does not pay. The run trains as the run asked for that choice."""
    cfg = with_(tiny_cfg, train={"precision": "auto", "compile": "auto", "threads": 1})
    auto = train(with_(cfg, output={"dir": str(tmp_path / "a")}))
    info = run_info(auto)
    ms = info["step_ms"]
    faster = min(PRECISIONS, key=lambda p: ms[p]["1"])
    assert set(ms) == {"fp32", "bf16", f"{faster} compiled"} and all(by["1"] > 0 for by in ms.values())
    assert (info["precision"], info["compiled"]) == (faster, False)
    assert "s, more than it saves over this run)" in capsys.readouterr().out
    explicit = train(with_(cfg, train={"precision": info["precision"], "compile": info["compiled"]},
                           output={"dir": str(tmp_path / "b")}))
    assert without_timing(auto.rows) == without_timing(explicit.rows)


def test_compiling_pays_where_the_run_ends_sooner_or_takes_more_steps_in_its_budget():
    # 2 ms a step, or 1 ms after 5 s of compiling: 1 ms saved a step
    assert not compile_pays(2.0, 1.0, 5.0, RunLength(4_000))  # 8 s, against 9
    assert compile_pays(2.0, 1.0, 5.0, RunLength(6_000))  # 12 s, against 11
    assert compile_pays(2.0, 1.0, 5.0, RunLength(10**9, seconds=60.0))  # 55,000 steps in the minute, against 30,000
    assert not compile_pays(2.0, 1.0, 5.0, RunLength(10**9, seconds=8.0))  # 3,000, against 4,000
    assert not compile_pays(2.0, 1.0, 5.0, RunLength(3_000, seconds=60.0))  # both finish in the minute: 8 s, against 6


@pytest.mark.parametrize("epochs, compiled", [(1, False), (300, True)])
def test_auto_times_the_compiled_step_only_for_a_run_long_enough_that_it_might_pay(tiny_cfg, monkeypatch, epochs,
                                                                                  compiled):
    """At 1 ms a step, saving at most COMPILE_SAVES_AT_MOST of it cannot repay COMPILE_SECONDS_AT_LEAST of
    compiling in one epoch's 10 steps; in 300 epochs' 3,000 it can (and, at no cost here, does)."""
    threads, asked = torch.get_num_threads(), []
    monkeypatch.setattr(vae.train.speed, "cxx_compiler", lambda: "c++")  # as on a machine with one
    monkeypatch.setattr(vae.train.speed, "step_milliseconds",
                        timed({"fp32": {threads: 1.0}, "fp32 compiled": {threads: 0.5}}, asked=asked))
    cfg = with_(tiny_cfg, train={"compile": "auto", "epochs": epochs})
    speed = vae.train.speed.choose_speed(cfg, None, None, World(), torch.device("cpu"), None, RunLength(epochs * 10))
    assert ("fp32 compiled" in asked) is compiled and speed.compiled is compiled


def test_auto_compiles_on_the_thread_count_fastest_compiled_among_those_within_reach(tiny_cfg, monkeypatch,
                                                                                      four_threads):
    """Uncompiled, 1 thread is the fastest (10 ms), 2 threads a little slower (11) and 4 far slower (20: saving 40%
    compiled, 12 ms, it could not beat 10). Compiled, 2 threads take 6 ms against 1 thread's 8: the run compiles on
    2 threads, and 4 threads are never compiled."""
    asked = []
    table = {"bf16": {1: 10.0, 2: 11.0, 4: 20.0}, "bf16 compiled": {1: 8.0, 2: 6.0, 4: 1.0}}
    monkeypatch.setattr(vae.train.speed, "cxx_compiler", lambda: "c++")  # as on a machine with one

    def step_milliseconds(cfg, model, splits, device, processes, steps, counts, started=None):
        asked.extend((p, n) for p in steps for n in counts)
        return timed(table)(cfg, model, splits, device, processes, steps, counts, started)
    monkeypatch.setattr(vae.train.speed, "step_milliseconds", step_milliseconds)
    cfg = with_(tiny_cfg, train={"precision": "bf16", "compile": "auto", "threads": "auto"})
    speed = vae.train.speed.choose_speed(cfg, None, None, World(), torch.device("cpu"), None, RunLength(10**6))
    assert (speed.compiled, speed.threads) == (True, 2)
    assert {n for p, n in asked if p == "bf16 compiled"} == {1, 2}
    assert speed.ms_per_step["bf16 compiled"] == {1: 8.0, 2: 6.0}


def test_the_run_length_is_the_steps_left_and_the_seconds_its_budget_leaves():
    cfg = with_(Config(), train={"epochs": 10, "batch_size": 128})
    assert run_length(cfg, 60_000, start=1, done=0, spent=0.0) == RunLength(10 * 469)  # 468 batches and a short one
    assert run_length(cfg, 60_000, start=3, done=100, spent=12.0) == RunLength(8 * 469 - 100)  # stopped in epoch 3
    budget = with_(cfg, train={"budget_minutes": 2.0})
    assert run_length(budget, 60_000, start=3, done=100, spent=12.0) == RunLength(8 * 469 - 100, 108.0)


@pytest.mark.parametrize("compiled", [False, True])
def test_auto_compile_trains_on_the_faster_and_a_resume_times_it_again(tiny_cfg, monkeypatch, capsys, compiled,
                                                                       compiling_always_might_pay):
    threads = torch.get_num_threads()
    fast, slow = ("fp32 compiled", "fp32") if compiled else ("fp32", "fp32 compiled")
    monkeypatch.setattr(vae.train.speed, "step_milliseconds", timed({fast: {threads: 1.0}, slow: {threads: 2.0}}))
    steps = []
    on_each_step(monkeypatch, lambda step, *args: steps.append(step) or step(*args))
    cfg = with_(tiny_cfg, train={"compile": "auto", "epochs": 1})
    first = train(cfg)
    assert run_info(first)["compiled"] is compiled and ("on cpu, compiled on" in capsys.readouterr().out) is compiled
    assert (steps[0].compiled is not None) is compiled  # the written-out step, its gradients compiled or not
    monkeypatch.setattr(vae.train.speed, "step_milliseconds", timed({fast: {threads: 2.0}, slow: {threads: 1.0}}))
    train(with_(cfg, train={"epochs": 2}), resume=first.run_dir)
    assert run_info(first)["compiled"] is not compiled  # timed again: compiling changes no number a run keeps


@pytest.mark.parametrize("precision,threads", [("bf16", 1), ("fp32", 2), ("fp32", 4)])
def test_auto_trains_on_the_fastest_pair(tiny_cfg, monkeypatch, capsys, four_threads, precision, threads):
    table = {p: {n: 1.0 if (p, n) == (precision, threads) else 2.0 + n for n in COUNTS} for p in PRECISIONS}
    monkeypatch.setattr(vae.train.speed, "step_milliseconds", timed(table))
    seen = threads_seen(monkeypatch)
    result = train(with_(tiny_cfg, train={"precision": "auto", "threads": "auto", "epochs": 1}))
    info = run_info(result)
    assert (info["precision"], info["threads"]) == (precision, threads)
    assert info["step_ms"] == {p: {str(n): t for n, t in by.items()} for p, by in table.items()}
    assert seen == {threads} and torch.get_num_threads() == 4
    plural = "s" * (threads > 1)
    start = f"on {threads} thread{plural} (timed: fp32 on 1 thread {table['fp32'][1]:.1f} ms, "
    assert start in capsys.readouterr().out


@pytest.mark.parametrize("faster", PRECISIONS)
def test_auto_precision_is_kept_on_resume(tiny_cfg, monkeypatch, capsys, faster):
    threads = torch.get_num_threads()
    slower = "bf16" if faster == "fp32" else "fp32"
    monkeypatch.setattr(vae.train.speed, "step_milliseconds", timed({faster: {threads: 1.0}, slower: {threads: 2.0}}))
    cfg = with_(tiny_cfg, train={"precision": "auto", "epochs": 1})
    first = train(cfg)
    assert run_info(first)["precision"] == faster
    # the machine changed: timed now, the other would win
    monkeypatch.setattr(vae.train.speed, "step_milliseconds", timed({faster: {threads: 2.0}, slower: {threads: 1.0}}))
    train(with_(cfg, train={"epochs": 2}), resume=first.run_dir)
    info = run_info(first)
    assert info["precision"] == faster and "step_ms" not in info  # kept from the checkpoint, not timed again
    assert info["previous"][0]["step_ms"] == {faster: {str(threads): 1.0}, slower: {str(threads): 2.0}}


def test_a_resume_times_autos_threads_again_at_the_kept_precision(tiny_cfg, monkeypatch, four_threads):
    cfg = with_(tiny_cfg, train={"precision": "auto", "threads": "auto", "epochs": 1})
    monkeypatch.setattr(vae.train.speed, "step_milliseconds", timed({"fp32": {1: 2.0, 2: 3.0, 4: 3.0},
                                                                     "bf16": {1: 1.0, 2: 3.0, 4: 3.0}}))
    first = train(cfg)
    assert (run_info(first)["precision"], run_info(first)["threads"]) == ("bf16", 1)
    # another machine: fp32 on 4 threads would win now, but the run stays bf16; its threads follow the machine
    monkeypatch.setattr(vae.train.speed, "step_milliseconds", timed({"fp32": {1: 3.0, 2: 3.0, 4: 0.5},
                                                                     "bf16": {1: 3.0, 2: 1.0, 4: 3.0}}))
    seen = threads_seen(monkeypatch)
    train(with_(cfg, train={"epochs": 2}), resume=first.run_dir)
    info = run_info(first)
    assert (info["precision"], info["threads"]) == ("bf16", 2) and seen == {2}
    assert info["step_ms"] == {"bf16": {"1": 3.0, "2": 1.0, "4": 3.0}}


@pytest.mark.parametrize("setting,expected", [(1, 1), (3, 3), ("all", 4)])
def test_threads_set_or_all_train_on_those_untimed_and_give_them_back(tiny_cfg, monkeypatch, four_threads,
                                                                      setting, expected):
    seen = threads_seen(monkeypatch)
    info = run_info(train(with_(tiny_cfg, train={"threads": setting, "epochs": 1})))
    assert seen == {expected} and info["threads"] == expected and "step_ms" not in info
    assert torch.get_num_threads() == 4
