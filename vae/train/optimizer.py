"""The run's optimizer: Adam, with AdamW's decoupled decay of the weight matrices where train.weight_decay > 0."""
from __future__ import annotations

import torch
from torch import nn

from vae.config.schema import TrainConfig

DECAYED = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)  # the layers whose `weight` decays


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Fused Adam at train.lr over the model's parameters; under train.weight_decay, AdamW with two groups: the
    layers' weights, decayed, and the rest (biases, the prior's means, variances and weights), not."""
    if not cfg.weight_decay:
        return torch.optim.Adam(model.parameters(), lr=cfg.lr, fused=True)
    decayed = {id(m.weight): m.weight for m in model.modules() if isinstance(m, DECAYED)}
    rest = [p for p in model.parameters() if id(p) not in decayed]
    groups = [{"params": list(decayed.values()), "weight_decay": cfg.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
