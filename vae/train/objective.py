"""What training minimizes: the negative ELBO (with KL warm-up and free bits), or the IWAE bound with
its standard or doubly reparameterized gradient."""
from __future__ import annotations

import math

import torch

from vae.config.schema import LossConfig
from vae.model.distributions import LossTerms, Rate, log_normal, log_standard_normal
from vae.model.likelihoods import BERNOULLI, Likelihood, vae_loss
from vae.train.distributed import batch_mean


def iwae_nats(log_px: torch.Tensor, rate: Rate, kl_weight: float | torch.Tensor = 1.0) -> torch.Tensor:
    """-IWAE_k, Burda et al. (2015), per example: -log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x).

    log_px (k, B) is log p(x|z_i) at the k samples z_i whose log p(z_i) / q(z_i|x) is rate.log_ratio
    -> (B,). A kl_weight w < 1 (warm-up) tempers the latent part of each log-weight, log p(x|z_i) +
    w log p(z_i) / q(z_i|x); k = 1 is then the warmed-up negative ELBO with a sampled rate.
    """
    log_w = log_px + kl_weight * rate.log_ratio  # (k, B)
    return math.log(len(log_w)) - torch.logsumexp(log_w, dim=0)


def stopped_log_ratio(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                      log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """log p(z) - log q(z|x) at samples z (k, B, L) of q = N(mu, diag(exp(logvar))) (B, L), with q's
    parameters held constant, so that gradients reach the encoder only through z (Roeder et al. 2017).
    log p(z) (k, B) is the prior's at z (computed from z for N(0, I) when not given). The value is
    rate.log_ratio's; (k, B)."""
    log_p = log_standard_normal(z) if log_prior is None else log_prior
    return log_p - log_normal(z, mu.detach(), logvar.detach())


def dreg_nats(log_px: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
              kl_weight: float | torch.Tensor = 1.0, log_prior: torch.Tensor | None = None) -> torch.Tensor:
    """-IWAE_k per example (B,) whose gradient is the doubly reparameterized one (Tucker et al. 2019).

    With log w_i = log p(x|z_i) + b (log p(z_i) - log q(z_i|x)) (b the KL weight, 1 after warm-up) and
    normalized weights v_i = w_i / sum_j w_j, the decoder gets sum_i v_i d log w_i (IWAE's own gradient)
    and the encoder, through z_i only, sum_i v_i (1 - b + b v_i) d log w_i / dz_i dz_i/dphi: the
    score-function term E[v_i d log q] is replaced by its reparameterized equal, which has far less
    variance at large k. At k = 1 it is STL, the sticking-the-landing gradient of the ELBO.
    log_px (k, B) is log p(x|z_i) at the samples z (k, B, L) of q(z|x) = N(mu, diag(exp(logvar))), log_prior
    (k, B) log p(z_i) (None: N(0, I)).
    """
    log_w = log_px + kl_weight * stopped_log_ratio(z, mu, logvar, log_prior)  # (k, B)
    v = torch.softmax(log_w.detach(), dim=0)
    if z.requires_grad:  # the gradient reaching z_i from log w_i, scaled by (1 - b + b v_i)
        factor = ((1 - kl_weight) + kl_weight * v).unsqueeze(-1)
        z.register_hook(lambda grad: grad * factor)
    surrogate = -(v * log_w).sum(0)
    value = math.log(len(log_w)) - torch.logsumexp(log_w.detach(), dim=0)
    return value + (surrogate - surrogate.detach())


def objective_nats(logits: torch.Tensor, x: torch.Tensor, rate: Rate, cfg: LossConfig,
                   kl_weight: float | torch.Tensor, posterior: tuple[torch.Tensor, ...] | None = None,
                   likelihood: Likelihood = BERNOULLI) -> tuple[torch.Tensor, LossTerms]:
    """What training minimizes, summed over the batch, and the negative ELBO's terms (B,) to report, from the
    decoder's output `logits` (k, B, params * D) (or (B, ...)) under `likelihood` p(x|z).

    iwae_k = 1: distortion + kl_weight * rate, where with free bits each dimension's rate, as a
    batch mean, counts as at least loss.free_bits nats (Kingma et al. 2016). iwae_k > 1: -IWAE_k,
    its log-weights' latent part weighted by kl_weight during warm-up. loss.gradient=dreg: -IWAE_k
    (the ELBO at k = 1, its rate sampled) with DReG gradients, which need the `posterior` (z, mu, logvar).
    """
    if cfg.gradient == "dreg":
        log_px = likelihood.log_prob(logits, x)  # (k, B)
        return (dreg_nats(log_px, *posterior, kl_weight, rate.log_prior).sum(),
                LossTerms(-log_px.detach().mean(0), rate.kl))
    if cfg.iwae_k > 1:
        # One pass over the (k, B, D) logits serves the bound and the reported terms: on the CPU
        # it costs about as much as the decoder's forward pass.
        log_px = likelihood.log_prob(logits, x)  # (k, B)
        return iwae_nats(log_px, rate, kl_weight).sum(), LossTerms(-log_px.detach().mean(0), rate.kl)
    terms = vae_loss(logits, x, rate, likelihood)
    if cfg.free_bits:
        # Dimensions whose mean over the whole batch (all processes under torchrun) is under the
        # floor count as free_bits nats, a constant: no gradient pushes them to the prior.
        kept = batch_mean(rate.kl_dims.detach()) > cfg.free_bits  # (D,)
        total_rate = len(x) * torch.where(kept, rate.kl_dims.mean(0), cfg.free_bits).sum()
    else:
        total_rate = terms.kl.sum()
    return terms.reconstruction.sum() + kl_weight * total_rate, terms
