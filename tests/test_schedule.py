"""Schedules: the learning rate of each epoch, the KL warm-up, early stopping, the time budget."""
import math

import pytest
from conftest import with_

from vae.config.schema import LossConfig, TrainConfig
from vae.train.loop import train
from vae.train.schedule import kl_weight, learning_rate, stops_early
from vae.train.step import EagerStep


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
    seen, real = [], EagerStep.__call__

    def recording(self, *args):
        seen.append(self.opt.param_groups[0]["lr"])
        real(self, *args)
    monkeypatch.setattr(EagerStep, "__call__", recording)
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


def test_the_time_budget_stops_once_the_epochs_seconds_reach_it():
    cfg = TrainConfig(budget_minutes=0.5)
    assert stops_early(cfg, {"loss": 1.0, "epoch": 1}, 5, seconds=29.9) == ""
    assert "time budget is spent (0.50 minutes of training, train.budget_minutes=0.5)" in \
        stops_early(cfg, {"loss": 1.0, "epoch": 1}, 5, seconds=30.0)


class TwoSecondEpochs:
    """A stand-in for the time module of vae.train.loop whose clock moves 1 s at every reading: the
    loop reads it twice in an epoch's steps and twice in its evaluation, so each epoch takes 2 s."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        self.now += 1.0
        return self.now


def test_a_timed_run_stops_on_its_budget_and_its_resume_counts_the_time_already_spent(
        tiny_cfg, monkeypatch, capsys):
    import vae.train.loop
    monkeypatch.setattr(vae.train.loop, "time", TwoSecondEpochs())
    seen, real = [], EagerStep.__call__

    def recording(self, *args):
        seen.append(self.opt.param_groups[0]["lr"])
        real(self, *args)
    monkeypatch.setattr(EagerStep, "__call__", recording)
    lr, budget = tiny_cfg.train.lr, 10 / 60  # 10 s: five 2-second epochs
    cfg = with_(tiny_cfg, train={"epochs": 3, "lr_schedule": "cosine", "budget_minutes": budget})
    ends = []  # (epoch, whether it is the run's last) as a sweep's pruner is told
    first = train(cfg, after_epoch=lambda row, last: ends.append((row["epoch"], last)))  # cosine over 3 epochs
    assert [r["seconds"] for r in first.rows] == [2.0] * 3
    assert seen == pytest.approx([cosine(t, lr) for t in (0, 0.5, 1) for _ in range(10)], rel=1e-12)
    assert "epochs 1..3 or 0.166667 minutes in all" in capsys.readouterr().out

    seen.clear()  # resumed with room for 100 epochs: the 6 s spent count, and 4 s are left
    longer = train(with_(cfg, train={"epochs": 100}), resume=first.run_dir,
                   after_epoch=lambda row, last: ends.append((row["epoch"], last)))
    assert [r["epoch"] for r in longer.rows] == [1, 2, 3, 4, 5]
    assert seen == pytest.approx([cosine(t, lr) for t in (0.6, 0.8) for _ in range(10)], rel=1e-12)
    assert ends == [(1, False), (2, False), (3, True), (4, False), (5, True)]  # a pruner spares a finished run
    lines = capsys.readouterr().out.splitlines()
    assert "early stop after epoch 5: the time budget is spent (0.17 minutes of training" in "\n".join(lines)
    assert [line.rsplit("  ", 1)[-1] for line in lines if line.startswith("epoch ")] == \
        ["0.1/0.166667 min", "0.2/0.166667 min"]  # epochs 4 (8 s) and 5 (10 s)
    assert "epochs 4..100 or 0.166667 minutes in all" in lines[0]

    again = train(with_(cfg, train={"epochs": 100}), resume=first.run_dir)
    assert len(again.rows) == 5 and "(epoch 5) stopped early: the time budget is spent" in capsys.readouterr().out
