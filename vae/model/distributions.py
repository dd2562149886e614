"""The model's distributions over z, in nats: the priors p(z) (a standard normal, a Gaussian mixture), the
diagonal Gaussian q(z|x), the rate, and the negative ELBO's terms (vae/model/likelihoods.py has p(x|z)).

One interface for a distribution over z: log_prob(z) (..., L) -> (...), and sample(noise), which maps
standard normal noise (n, noise_dim) to n draws (n, L). The rate is the analytic KL where a closed form
exists (a diagonal Gaussian against N(0, I)), else a Monte Carlo estimate from the samples z themselves.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from typing import NamedTuple

import torch

LOG_2PI = math.log(2 * math.pi)
# exp() of less is below float32's normal numbers (from 2^-126 = e^-87.34) or at their edge, where a CPU's vectorized
# exp takes a slow path, flushed or not, many times slower than at -86 (docs/benchmarks.md).
# A mixture's far-off components reach it as it trains; such a term is under 1e-30 of any sum it joins.
EXP_FLOOR = -87.0


def wide(x: torch.Tensor) -> torch.Tensor:
    """x in fp32, or in its own dtype if wider: what the latents' arithmetic runs in, also under bf16 autocast."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def exp_or_zero(x: torch.Tensor) -> torch.Tensor:
    """exp(x), exactly zero where x < EXP_FLOOR (never computed there)."""
    return x.masked_fill(x < EXP_FLOOR, -math.inf).exp_()


def logsumexp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """torch.logsumexp(x, dim), each term under e^EXP_FLOOR times the largest taken as zero (exp_or_zero)."""
    top = x.detach().amax(dim, keepdim=True)
    top = top.masked_fill(top.isinf(), 0)  # a row of -inf (or with +inf) stays -inf (+inf), as torch has it
    return exp_or_zero(x - top).sum(dim).log() + top.squeeze(dim)


def log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dim (broadcasting)."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


class StandardNormal:
    """p(z) = N(0, I); noise is z itself."""

    extra_noise = 0  # noise numbers a draw takes beyond the L of z

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return log_standard_normal(z)

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        return noise

    def double(self) -> StandardNormal:
        return self


class DiagonalGaussian(NamedTuple):
    """N(mu, diag(exp(logvar))): q(z|x) of a batch, mu and logvar (..., L)."""

    mu: torch.Tensor
    logvar: torch.Tensor

    def rsample(self, eps: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps, gradients flowing through mu and sigma."""
        return self.mu + torch.exp(0.5 * self.logvar) * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return log_normal(z, self.mu, self.logvar)


class GaussianMixture(NamedTuple):
    """p(z) = sum_k w_k N(z; mu_k, diag(exp(logvar_k))) with log_weights (K,), mu and logvar (K, L)."""

    log_weights: torch.Tensor
    mu: torch.Tensor
    logvar: torch.Tensor

    extra_noise = 1  # one number picks the component

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """(..., L) -> (...): a log-sum-exp over the components, each log N(z; mu_k, var_k) expanded as
        -1/2 [z^2 . p_k - 2 z . (mu_k p_k) + const_k] with p = 1/var, so the K terms are matrix products.
        In the tensors' own precision, also under bf16 autocast: the three terms reach 1e3-1e4 for narrow
        components and nearly cancel, so bf16's 8 bits of mantissa would leave errors of tens of nats."""
        device = z.device.type  # (the memory check runs the model on the meta device, which has no autocast)
        with torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext():
            precision = torch.exp(-self.logvar)  # (K, L)
            const = (self.mu.pow(2) * precision + self.logvar + LOG_2PI).sum(-1)  # (K,)
            log_components = -0.5 * (z.pow(2) @ precision.T - 2 * z @ (self.mu * precision).T + const)  # (..., K)
            return logsumexp(self.log_weights + log_components, dim=-1)

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        """noise (n, 1 + L): Phi(noise[:, 0]) picks the component by inverse CDF, the rest is its Gaussian's."""
        u = torch.special.ndtr(noise[:, 0].to(self.mu.dtype))  # (n,) uniform in (0, 1)
        cdf = torch.cumsum(self.log_weights.exp(), 0)
        c = torch.searchsorted(cdf, u.contiguous()).clamp(max=len(cdf) - 1)  # (n,)
        return self.mu[c] + torch.exp(0.5 * self.logvar[c]) * noise[:, 1:]

    def double(self) -> GaussianMixture:
        return GaussianMixture(*(t.double() for t in self))


Prior = StandardNormal | GaussianMixture
STANDARD_NORMAL = StandardNormal()


class LossTerms(NamedTuple):
    """Per-example nats, each (B,): distortion -log p(x|z) and rate KL(q(z|x) || p(z))."""

    reconstruction: torch.Tensor
    kl: torch.Tensor

    @property
    def total(self) -> torch.Tensor:
        """The negative ELBO, (B,)."""
        return self.reconstruction + self.kl


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_d, exp(logvar_d)) || N(0, 1)) for each latent dim: (B, L) -> (B, L).

    Kingma & Welling (2014), Appendix B: -1/2 * (1 + log sigma^2 - mu^2 - sigma^2).
    """
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())


class Rate(NamedTuple):
    """The latent side of the ELBO for k samples z of q(z|x) per example."""

    kl: torch.Tensor  # (B,) KL(q(z|x) || p(z)): analytic where a closed form exists, else the mean over the
    #                   k samples of log q - log p
    log_ratio: torch.Tensor  # (k, B) log p(z) - log q(z|x) at each sample: the latent part of log w
    kl_dims: torch.Tensor | None = None  # (B, D) the KL of each latent dimension, where the rate is a sum
    #                                      over dimensions (a factorized prior and posterior), else None
    kl_top: torch.Tensor | None = None  # (B,) with two stochastic layers, the part of kl that z2 carries
    log_prior: torch.Tensor | None = None  # (k, B) log p(z) at the samples where the rate needed it; None
    #                                        under N(0, I), where whoever needs it takes it from z


def sampled_rate(log_q: torch.Tensor, log_p: torch.Tensor) -> Rate:
    """The rate with no closed form, from log q(z|x) and log p(z) at the samples z (..., B): its KL the
    mean of log q - log p over the samples (an unbiased estimate)."""
    log_ratio = log_p - log_q
    return Rate(-log_ratio.reshape(-1, log_ratio.shape[-1]).mean(0), log_ratio, log_prior=log_p)


def gaussian_log_q(eps: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log q(z|x) at z = mu + sigma * eps, written through eps: log N(eps; 0, I) - sum(logvar) / 2. (..., B)"""
    return -0.5 * (eps.pow(2) + logvar + LOG_2PI).sum(-1)


def latent_rate(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, z: torch.Tensor, prior: Prior) -> Rate:
    """The rate of q(z|x) = N(mu, diag(exp(logvar))) at its samples z = mu + sigma * eps against `prior`:
    analytic against N(0, I), a Monte Carlo estimate against a mixture."""
    if isinstance(prior, StandardNormal):
        return gaussian_rate(mu, logvar, eps, z)
    return sampled_rate(gaussian_log_q(eps, logvar), prior.log_prob(z))


def gaussian_rate(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, z: torch.Tensor | None = None) -> Rate:
    """The rate of q(z|x) = N(mu, diag(exp(logvar))) against p(z) = N(0, I), at samples
    z = mu + sigma * eps (computed here unless the caller has them): mu, logvar (B, L), eps (k, B, L).

    Written through eps, log q(z|x) = log N(eps; 0, I) - sum(logvar) / 2, and the 2 pi terms of
    the prior and the posterior cancel.
    """
    z = mu + torch.exp(0.5 * logvar) * eps if z is None else z
    kl_dims = kl_per_dim(mu, logvar)
    return Rate(kl_dims.sum(-1), -0.5 * z.pow(2).sum(-1) + 0.5 * (eps.pow(2) + logvar).sum(-1), kl_dims)
