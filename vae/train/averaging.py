"""An exponential moving average of the weights over the training steps (Polyak averaging).

The average moves a fraction 1 - d of the way to the weights after each step. Its decay d rises
as (1 + n) / (10 + n) over the first n updates up to train.ema_decay (TensorFlow's
ExponentialMovingAverage with num_updates), so it follows the fast early training instead of
dragging the initial weights along for thousands of steps. Every evaluation uses these weights.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """The averaged copy of `model` (same architecture, no gradients) and its update count."""

    def __init__(self, model: nn.Module, decay: float):
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.decay, self.updates = decay, 0
        self.weights, self.averages = list(model.parameters()), list(self.model.parameters())

    def rate(self) -> float:
        """1 - d of the next update: how far the average moves towards the weights."""
        return 1 - min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights (after each optimizer step)."""
        torch._foreach_lerp_(self.averages, self.weights, self.rate())
        self.updates += 1

    def state(self) -> dict:
        """What a checkpoint keeps of it."""
        return {"model": self.model.state_dict(), "updates": self.updates}
