"""Schedules: the learning rate of each epoch, the KL warm-up, early stopping."""
import pytest

from vae.config import LossConfig, TrainConfig
from vae.schedule import kl_weight, learning_rate
from vae.step import EagerStep
from vae.training import train

from conftest import with_


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
