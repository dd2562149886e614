"""What changes as training goes on: the learning rate, the KL weight, and when to stop before train.epochs."""
from __future__ import annotations

import math

from vae.config.schema import LossConfig, TrainConfig

EPOCHS_TIMED = 3  # the recent epochs whose longest predicts the next one's seconds


def learning_rate(cfg: TrainConfig, epoch: int, seconds: float = 0.0) -> float:
    """The learning rate of `epoch` (counted from 1) under train.lr_schedule, `seconds` of wall time into the run.

    With a time budget (train.budget_minutes) the schedule follows whichever budget, epochs or time,
    is the more used up, so it ends at its floor whichever runs out first, on a slow machine or a fast one.
    """
    t = (epoch - 1) / max(cfg.epochs - 1, 1)  # 0 in the first epoch, 1 in the last
    if cfg.budget_minutes:
        t = min(max(t, seconds / (60 * cfg.budget_minutes)), 1.0)
    if cfg.lr_schedule == "cosine":
        return cfg.lr * (cfg.lr_decay_to + (1 - cfg.lr_decay_to) * 0.5 * (1 + math.cos(math.pi * t)))
    if cfg.lr_schedule == "exponential":
        return cfg.lr * cfg.lr_decay_to ** t
    if cfg.lr_schedule == "burda":
        # Burda et al. (2015): stage i = 0..7 is 3^i epochs at lr * 10^(-i/7), 3280 epochs in all
        stage = 0
        while stage < 7 and epoch > (3 ** (stage + 1) - 1) // 2:
            stage += 1
        return cfg.lr * 10 ** (-stage / 7)
    return cfg.lr


def kl_weight(cfg: LossConfig, epoch: int, step: int, steps_per_epoch: int) -> float:
    """loss.beta, ramped linearly from 0 over the first loss.kl_warmup_epochs epochs, step by step."""
    if not cfg.kl_warmup_epochs:
        return cfg.beta
    done = epoch - 1 + (step + 1) / steps_per_epoch  # epochs done once this step is
    return cfg.beta * min(1.0, done / cfg.kl_warmup_epochs)


def seconds_spent(rows: list[dict]) -> float:
    """A run's wall time so far: its epochs' seconds in metrics.csv (what train.budget_minutes counts)."""
    return sum(row["seconds"] for row in rows)


def next_epoch_seconds(rows: list[dict]) -> float:
    """What the next epoch is expected to take: the longest of the last EPOCHS_TIMED (0 before the first)."""
    return max((row["seconds"] for row in rows[-EPOCHS_TIMED:]), default=0.0)


def stops_early(cfg: TrainConfig, best: dict, epoch: int, rows: list[dict] = ()) -> str:
    """Why training stops after `epoch` with metrics `rows` so far, under train.budget_minutes or train.patience
    ('' while it goes on). The budget stops before an epoch that would not fit in it."""
    spent, budget, next_epoch = seconds_spent(rows), 60 * cfg.budget_minutes, next_epoch_seconds(rows)
    if budget and spent + next_epoch > budget:
        return (f"the next epoch would not fit in the time budget ({spent / 60:.2f} of train.budget_minutes="
                f"{cfg.budget_minutes:g} spent, an epoch takes up to {next_epoch:.1f} s)")
    if not cfg.patience or best["epoch"] is None or epoch - best["epoch"] < cfg.patience:
        return ""
    return (f"the validation loss has not improved for {epoch - best['epoch']} epochs (train.patience="
            f"{cfg.patience}; best {best['loss']:.3f} nats at epoch {best['epoch']})")
