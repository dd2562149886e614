"""The inverse autoregressive flow (Kingma et al. 2016) on top of the Gaussian posterior (model.posterior=flow).

z_0 = mu + sigma * eps, then T steps z_t = s_t * z_{t-1} + (1 - s_t) * m_t with [m_t, log-gate_t] =
MADE_t(z_{t-1}, h): output d depends on z_{<d} only, so each step's Jacobian is triangular with diagonal
s_t and log q(z_T|x) = log q(z_0|x) - sum_t sum_d log s_{t,d}. The context h comes from the encoder.
Consecutive steps use reversed orderings of the dimensions.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

GATE_BIAS = 1.0  # gate logits start near +1 (Kingma et al.: "close to +1 or +2"), s = sigmoid(1) ~ 0.73


class MaskedLinear(nn.Linear):
    """y = x (W * mask)^T + b: W's connections limited by a fixed 0/1 mask (out, in)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Germain et al. (2015): z (..., L) and context h (..., H) -> m, gate logits (..., L) each, output d
    (in `order`) depending on the inputs before it only, and on h through the hidden layer and directly
    (without the direct path the first output in the order would be a bare bias, blind to x)."""

    def __init__(self, order: torch.Tensor, hidden: int, activation: type[nn.Module]):
        super().__init__()
        L = len(order)
        degree_in = order + 1  # (L,) in 1..L
        degree_hidden = torch.arange(hidden) % max(1, L - 1) + 1  # (hidden,) in 1..L-1
        self.inp = MaskedLinear((degree_hidden[:, None] >= degree_in[None, :]).float())  # (hidden, L)
        self.context = nn.Linear(hidden, hidden)
        self.act = activation()
        out = (degree_in[:, None] > degree_hidden[None, :]).float()  # (L, hidden): d sees hidden units < d
        self.out = MaskedLinear(torch.cat([out, out]))  # m and the gate logits
        self.context_out = nn.Linear(hidden, 2 * L, bias=False)
        with torch.no_grad():
            self.out.bias[L:] += GATE_BIAS

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.out(self.act(self.inp(z) + self.context(h))) + self.context_out(h)).chunk(2, dim=-1)


class IAF(nn.Module):
    """T steps of the flow; forward(z0, h) -> z_T and sum_t sum_d log s_{t,d}, each over (..., B)."""

    def __init__(self, latent: int, steps: int, hidden: int, activation: type[nn.Module]):
        super().__init__()
        orders = [torch.arange(latent) if t % 2 == 0 else torch.arange(latent).flip(0) for t in range(steps)]
        self.steps = nn.ModuleList(MADE(order, hidden, activation) for order in orders)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (..., B, L) and h (B, H) -> z_T (..., B, L), log|det dz_T/dz_0| (..., B)."""
        h = h.expand(*z.shape[:-1], h.shape[-1])
        log_det = torch.zeros(z.shape[:-1], device=z.device)
        for made in self.steps:
            m, gate = made(z, h)
            s = torch.sigmoid(gate.float())
            z = s * z + (1 - s) * m.float()
            log_det = log_det + F.logsigmoid(gate.float()).sum(-1)
        return z, log_det
