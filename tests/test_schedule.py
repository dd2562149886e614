"""Schedules: the learning rate of each epoch, the KL warm-up, early stopping, the time budget."""
import math

import pytest
from conftest import on_each_step, with_

from vae.config.schema import LossConfig, TrainConfig
from vae.train.loop import train
from vae.train.schedule import kl_weight, learning_rate, stops_early


def test_learning_rate_schedules():
    def lrs(schedule, epochs):
        cfg = TrainConfig(lr=1e-2, epochs=epochs, lr_schedule=schedule, lr_decay_to=0.01)
        return [learning_rate(cfg, e) for e in range(1, epochs + 1)]
    assert lrs("constant", 3) == [1e-2] * 3
    assert lrs("exponential", 3) == pytest.approx([1e-2, 1e-3, 1e-4])
    assert lrs("cosine", 3) == pytest.approx([1e-2, 1e-2 * (0.01 + 0.99 * 0.5), 1e-4])
    burda = lrs("burda", 3300)
    assert burda[0] == 1e-2 and burda[1] == burda[3] == pytest.approx(1e-2 * 10 ** (-1 / 7)) != burda[4]
    assert burda[3279] == burda[3299] == pytest.approx(1e-3)  # the last stage (i = 7) is epochs 1094..3280
    assert burda[1092] != burda[1093] == pytest.approx(1e-3)


def test_the_schedule_sets_each_epochs_learning_rate(tiny_cfg, monkeypatch):
    seen = []

    def recording(step, *args):
        seen.append(step.opt.param_groups[0]["lr"])
        step(*args)
    on_each_step(monkeypatch, recording)
    train(with_(tiny_cfg, train={"epochs": 3, "lr_schedule": "exponential", "lr_decay_to": 0.25}))
    lr = tiny_cfg.train.lr  # exponential from lr to lr / 4 over 3 epochs: lr, lr / 2, lr / 4, 10 steps each
    assert seen == pytest.approx([lr] * 10 + [lr / 2] * 10 + [lr / 4] * 10, rel=1e-12)


def test_kl_warmup_rises_linearly_step_by_step_then_holds_beta():
    cfg = LossConfig(beta=0.5, kl_warmup_epochs=2)
    assert kl_weight(cfg, epoch=1, step=0, steps_per_epoch=10) == pytest.approx(0.5 * 0.05)
    assert kl_weight(cfg, epoch=1, step=9, steps_per_epoch=10) == pytest.approx(0.25)
    assert kl_weight(cfg, epoch=2, step=9, steps_per_epoch=10) == 0.5
    assert kl_weight(cfg, epoch=7, step=3, steps_per_epoch=10) == 0.5
    assert kl_weight(LossConfig(beta=2.0), epoch=1, step=0, steps_per_epoch=10) == 2.0


def cosine(t, lr=1e-2, floor=0.1):
    """The cosine schedule at fraction t of the run, by hand."""
    return lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def test_a_time_budget_runs_the_schedule_over_whichever_budget_is_more_used():
    cfg = TrainConfig(lr=1e-2, epochs=1001, lr_schedule="cosine", budget_minutes=2)  # 120 s
    assert learning_rate(cfg, 1, seconds=0) == pytest.approx(1e-2)
    assert learning_rate(cfg, 2, seconds=30) == pytest.approx(cosine(0.25))  # time is the more used budget
    assert learning_rate(cfg, 751, seconds=30) == pytest.approx(cosine(0.75))  # the epochs are
    assert learning_rate(cfg, 3, seconds=120) == learning_rate(cfg, 3, seconds=500) == pytest.approx(1e-3)
    assert learning_rate(TrainConfig(lr=1e-2, epochs=1000, lr_schedule="cosine"), 2, seconds=500) == \
        pytest.approx(cosine(1 / 999))  # no budget: the seconds change nothing


def test_the_time_budget_stops_before_an_epoch_that_would_not_fit():
    cfg, best = TrainConfig(budget_minutes=0.5), {"loss": 1.0, "epoch": 1}
    rows = [{"seconds": s} for s in (9.0, 5.0, 6.0, 5.0)]  # 25 s spent; the longest of the last three is 6 s
    assert stops_early(cfg, best, 4, rows[:3]) == ""  # 20 + 9 <= 30
    assert stops_early(cfg, best, 4, rows) == \
        "the next epoch would not fit in the time budget (0.42 of train.budget_minutes=0.5 spent, an epoch takes " \
        "up to 6.0 s)"
    assert stops_early(TrainConfig(budget_minutes=0.5), best, 4, rows[:3] + [{"seconds": 4.0}]) == ""  # 24 + 6


class Clock:
    """A stand-in for the time module of vae.train.loop whose clock moves only when the test moves it: by
    STARTUP in each train() call (while the data is read) and by STEP in each training step. tiny_cfg has 10
    steps an epoch: an epoch takes 2 s, the first of each call 3 s."""

    STARTUP, STEP = 1.0, 0.2

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    import vae.train.loop
    clock = Clock()
    monkeypatch.setattr(vae.train.loop, "time", clock)
    real_load = vae.train.loop.load_splits

    def load_splits(*args):
        clock.now += Clock.STARTUP
        return real_load(*args)
    monkeypatch.setattr(vae.train.loop, "load_splits", load_splits)
    return clock


def test_a_timed_run_stops_on_its_budget_and_its_resume_counts_the_time_already_spent(
        tiny_cfg, clock, monkeypatch, capsys):
    seen = []

    def recording(step, *args):
        seen.append(step.opt.param_groups[0]["lr"])
        clock.now += Clock.STEP
        step(*args)
    on_each_step(monkeypatch, recording)
    lr, budget = tiny_cfg.train.lr, 0.2  # 12 s
    cfg = with_(tiny_cfg, train={"epochs": 3, "lr_schedule": "cosine", "budget_minutes": budget})
    ends = []  # (epoch, whether it is the run's last) as a sweep's pruner is told
    first = train(cfg, after_epoch=lambda row, last: ends.append((row["epoch"], last)))  # cosine over 3 epochs
    assert [r["seconds"] for r in first.rows] == pytest.approx([3.0, 2.0, 2.0])  # the start-up counts
    assert seen == pytest.approx([cosine(t, lr) for t in (0, 0.5, 1) for _ in range(10)], rel=1e-12)
    assert "epochs 1..3 or 0.2 minutes in all" in capsys.readouterr().out

    seen.clear()  # resumed with room for 100 epochs: the 7 s spent count, and 5 s are left
    clock.now = 0.0
    longer = train(with_(cfg, train={"epochs": 100}), resume=first.run_dir,
                   after_epoch=lambda row, last: ends.append((row["epoch"], last)))
    assert [r["epoch"] for r in longer.rows] == [1, 2, 3, 4]  # epoch 4 takes 3 s: 10 s spent, 2 s left
    assert clock.now == pytest.approx(3.0)
    assert seen == pytest.approx([cosine(7 / 12, lr)] * 10, rel=1e-12)
    assert ends == [(1, False), (2, False), (3, True), (4, True)]  # a pruner spares a finished run
    lines = capsys.readouterr().out.splitlines()
    assert "early stop after epoch 4: the next epoch would not fit in the time budget (0.17 of " \
        "train.budget_minutes=0.2 spent, an epoch takes up to 3.0 s)" in "\n".join(lines)
    assert "epochs 4..100 or 0.2 minutes in all" in lines[0]

    again = train(with_(cfg, train={"epochs": 100}), resume=first.run_dir)
    assert len(again.rows) == 4 and "(epoch 4) stopped early: the next epoch would not fit" in capsys.readouterr().out


@pytest.mark.parametrize("budget_s", [4.0, 6.9, 11.0])
def test_the_time_budget_never_overruns_and_leaves_less_than_an_epoch(tiny_cfg, clock, monkeypatch, budget_s):
    def timed(step, *args):
        clock.now += Clock.STEP
        step(*args)
    on_each_step(monkeypatch, timed)
    run = train(with_(tiny_cfg, train={"epochs": 100, "budget_minutes": budget_s / 60}))
    assert sum(r["seconds"] for r in run.rows) == pytest.approx(clock.now)  # every second of the call counted
    assert clock.now <= budget_s < clock.now + 3.0  # inside the budget, and the longest epoch would not have fit
