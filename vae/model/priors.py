"""The prior p(z) of the top stochastic layer (model.prior): each is called with the top layer's
posterior network and returns the distribution (vae/model/distributions.py) to use for this batch."""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vae.model.distributions import STANDARD_NORMAL, GaussianMixture, Prior, StandardNormal, wide

# x (K, D) -> (mu, logvar) of q(z|x) at the top layer, each (K, L)
TopPosterior = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class LatentPrior(nn.Module):
    """The interface: forward(top_posterior) -> the distribution p(z) (its parameters may be learned)."""

    extra_noise: int  # noise numbers one draw of its distribution takes beyond the L of z

    def forward(self, top_posterior: TopPosterior) -> Prior:
        raise NotImplementedError


class NormalPrior(LatentPrior):
    """p(z) = N(0, I): no parameters."""

    extra_noise = StandardNormal.extra_noise

    def forward(self, top_posterior: TopPosterior) -> StandardNormal:
        return STANDARD_NORMAL


class MixturePrior(LatentPrior):
    """p(z) = sum_k w_k N(mu_k, diag(exp(logvar_k))): K learned Gaussians and their weights."""

    extra_noise = GaussianMixture.extra_noise

    def __init__(self, components: int, latent: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(components))
        self.mu = nn.Parameter(torch.randn(components, latent))
        self.logvar = nn.Parameter(torch.zeros(components, latent))

    def forward(self, top_posterior: TopPosterior) -> GaussianMixture:
        return GaussianMixture(F.log_softmax(wide(self.logits), 0), wide(self.mu), wide(self.logvar))


class VampPrior(LatentPrior):
    """Tomczak & Welling (2018): p(z) = (1/K) sum_k q(z | u_k), the posterior at K learned pseudo-inputs u_k
    (K, D), kept in [0, 1] by a hard tanh and started at 0.05 +- 0.01 per pixel as in their code."""

    extra_noise = GaussianMixture.extra_noise

    def __init__(self, components: int, pixels: int):
        super().__init__()
        self.pseudo_inputs = nn.Parameter(0.05 + 0.01 * torch.randn(components, pixels))

    def forward(self, top_posterior: TopPosterior) -> GaussianMixture:
        mu, logvar = top_posterior(F.hardtanh(self.pseudo_inputs, 0.0, 1.0))  # (K, L) each
        K = len(self.pseudo_inputs)
        return GaussianMixture(torch.full((K,), -math.log(K), device=mu.device), mu.float(), logvar.float())


def build_prior(name: str, components: int, latent: int, pixels: int) -> LatentPrior:
    """The module that gives p(z) of a top layer of `latent` units, of images of `pixels` numbers: model.prior."""
    if name == "mog":
        return MixturePrior(components, latent)
    if name == "vamp":
        return VampPrior(components, pixels)
    return NormalPrior()

