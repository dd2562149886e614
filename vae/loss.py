"""The negative ELBO in nats, per example: reconstruction cross-entropy + analytic Gaussian KL."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class LossTerms(NamedTuple):
    """Per-example nats, each (B,): distortion -log p(x|z) and rate KL(q(z|x) || p(z))."""

    reconstruction: torch.Tensor
    kl: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        """The negative ELBO, (B,)."""
        return self.reconstruction + self.kl


def reconstruction_nats(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log Bernoulli(x | sigmoid(logits)) summed over pixels: (B, D) -> (B,).

    Computed from logits, which is stable where sigmoid saturates; x may be soft (in [0, 1]).
    """
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=-1)


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) = sum_d x_d * l_d - softplus(l_d): logits (..., B, D), x (B, D) -> (..., B).

    The same quantity as -reconstruction_nats, written to broadcast over leading sample dims.
    """
    return (logits * x).sum(-1) - F.softplus(logits).sum(-1)


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_d, exp(logvar_d)) || N(0, 1)) for each latent dim: (B, L) -> (B, L).

    Kingma & Welling (2014), Appendix B: -1/2 * (1 + log sigma^2 - mu^2 - sigma^2).
    """
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


def kl_nats(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(0, I)), summed over latent dims: (B, L) -> (B,)."""
    return kl_per_dim(mu, logvar).sum(dim=-1)


def vae_loss(logits: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> LossTerms:
    return LossTerms(reconstruction_nats(logits, x), kl_nats(mu, logvar))
