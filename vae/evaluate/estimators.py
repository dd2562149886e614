"""Estimators of what the KL term says about a model: bounds on log p(x) (the one home of the IWAE
estimate), the rate split, active units, the latent plane.

Tensor math over posteriors q(z|x) = N(mu, diag(exp(logvar))) and a likelihood; the functions work
in chunks so that 5000 importance samples x 10,000 images fit in memory.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm import tqdm

from vae.data.split import Split
from vae.model.distributions import LOG_2PI, STANDARD_NORMAL, Prior, log_normal
from vae.model.vae import VAE

IWAE_EXAMPLES = 100  # examples per IWAE batch
IWAE_SAMPLES_PER_CHUNK = {"cpu": 4096, "cuda": 131072}  # z's decoded at once (memory vs speed), at one output per pixel
MIXTURE_CHUNK = 512  # rows of z against every component at once
ACTIVE_THRESHOLD = 0.01  # Burda et al. (2015): unit d is active when Cov_x(E_q[z_d]) > 0.01

# log w = log p(x, z) - log q(z|x) for a batch, at the samples z made from noise eps (S, B, D) -> (S, B)
LogWeight = Callable[[torch.Tensor], torch.Tensor]


def activity(mu: torch.Tensor, logvar: torch.Tensor | None = None) -> torch.Tensor:
    """How much each latent dim's posterior mean varies across the data (N, L) -> (L,): Var_x(mu_d), on the
    scale that N(0, I) fixes (Burda et al.); given logvar, as a share of z_d's whole variance under the
    aggregate posterior, Var_x(mu_d) / (Var_x(mu_d) + E_x sigma_d^2), for a learned prior, which leaves z's
    scale free (the two agree where the aggregate posterior has unit variance)."""
    variance = mu.double().var(dim=0)
    return variance if logvar is None else variance / (variance + logvar.double().exp().mean(0))


def active_units(mu: torch.Tensor, logvar: torch.Tensor | None = None, threshold: float = ACTIVE_THRESHOLD) -> int:
    """Latent dims whose activity (above) is over the threshold."""
    return int((activity(mu, logvar) > threshold).sum())


def active_dims(model: VAE, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(L,) bool: the dims active under the rule for `model`'s prior, the share of z_d's variance against a
    learned prior and Burda et al.'s Var_x(mu_d) against N(0, I) (`activity`)."""
    return activity(mu, logvar if model.learned_prior else None) > ACTIVE_THRESHOLD


def importance_weighted_bound(log_weight: LogWeight, shape: tuple[int, int], k: int, chunk: int,
                              generator: torch.Generator | None = None, device: torch.device | None = None,
                              dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """IWAE bound (Burda et al. 2015) and the k-sample ELBO of log p(x), per example: each (B,).

    log w_i = log p(x, z_i) - log q(z_i|x), z_i ~ q(z|x) made from noise eps_i ~ N(0, I) of
    `shape` (B, D), i = 1..k; IWAE_k = logmeanexp_i log w_i (<= log p(x), tightening as k grows;
    k = 1 is the ELBO), ELBO = mean_i log w_i. The noise is drawn `chunk` samples at a time; the
    log-mean-exp is streamed.
    """
    B, D = shape
    lse = torch.full((B,), -math.inf, dtype=torch.float64, device=device)
    total = torch.zeros(B, dtype=torch.float64, device=device)
    for start in range(0, k, chunk):
        s = min(chunk, k - start)
        eps = torch.randn((s, B, D), generator=generator, device=device, dtype=dtype)
        log_w = log_weight(eps).double()  # (s, B)
        lse = torch.logaddexp(lse, torch.logsumexp(log_w, dim=0))
        total += log_w.sum(0)
    return lse - math.log(k), total / k


@torch.no_grad()
def iwae_batch(model: VAE, x: torch.Tensor, k: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """IWAE-k estimate of -log p(x) and the k-sample negative ELBO of images x (B, D): each (B,)."""
    # A likelihood with more outputs per pixel decodes fewer z's at once, so that a chunk's tensors keep their size
    # (a 5-logistic mixture's 15 outputs per pixel would make each 15x the Bernoulli's).
    per_pixel = model.likelihood.params
    chunk = max(1, IWAE_SAMPLES_PER_CHUNK.get(x.device.type, 4096) // IWAE_EXAMPLES // per_pixel)

    def log_weight(eps):  # eps (s, B, noise_dim) -> (s, B)
        out = model(x, eps)
        return model.likelihood.evaluation.log_prob(out.logits, x) + out.rate.log_ratio
    log_px, elbo = importance_weighted_bound(log_weight, (len(x), model.noise_dim), k, chunk, generator, x.device)
    return -log_px, -elbo


@torch.no_grad()
def iwae_nll(model: VAE, split: Split, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example IWAE-k estimate of -log p(x) and the k-sample negative ELBO, each (N,)."""
    device = split.images.device
    gen = torch.Generator(device=device).manual_seed(seed)
    batches = tqdm(torch.arange(len(split), device=device).split(IWAE_EXAMPLES), desc=f"IWAE k={k}",
                   leave=False, disable=None)
    nll, neg_elbo = zip(*(iwae_batch(model, split.pixels(idx), k, gen) for idx in batches))
    return torch.cat(nll), torch.cat(neg_elbo)


class GaussianComponents:
    """Diagonal Gaussians N(mu_m, diag(exp(logvar_m))), m = 1..M, whose log densities at many points are matrix
    products: log N(z; mu_m, var_m) = -1/2 [z^2 . p_m - 2 z . (mu_m p_m) + const_m], p = 1/var. float64."""

    def __init__(self, mu: torch.Tensor, logvar: torch.Tensor):
        mu, logvar = mu.double(), logvar.double()
        self.precision = torch.exp(-logvar)  # (M, L)
        self.scaled_mu = mu * self.precision
        self.const = (mu.pow(2) * self.precision + logvar + LOG_2PI).sum(-1)  # (M,)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """z (c, L) -> log N(z_i; mu_m, var_m) of each point and component: (c, M)."""
        z = z.double()
        return -0.5 * (z.pow(2) @ self.precision.T - 2 * z @ self.scaled_mu.T + self.const)

    def log_mixture(self, z: torch.Tensor, leave_out: torch.Tensor | None = None,
                    chunk: int = MIXTURE_CHUNK) -> torch.Tensor:
        """log (1/M) sum_m N(z_i; mu_m, var_m), the equal mixture of the components, at each row of z (N, L): (N,);
        row i leaves component `leave_out[i]` out (its own posterior), a mixture of the other M - 1."""
        out = []
        for start in range(0, len(z), chunk):
            log_c = self.log_prob(z[start:start + chunk])  # (c, M)
            if leave_out is not None:
                log_c[torch.arange(len(log_c)), leave_out[start:start + chunk]] = -math.inf
            out.append(torch.logsumexp(log_c, dim=1) - math.log(log_c.shape[1] - (leave_out is not None)))
        return torch.cat(out)


def rate_split(mu: torch.Tensor, logvar: torch.Tensor, prior: Prior = STANDARD_NORMAL, chunk: int = 256,
               generator: torch.Generator | None = None, progress: bool = False) -> dict[str, float]:
    """ELBO surgery (Hoffman & Johnson 2016): E_x KL(q(z|x)||p(z)) = I(x; z) + KL(q(z)||p(z)), against the
    model's own prior.

    q(z) = (1/N) sum_n q(z|x_n) is the aggregate posterior over the N given posteriors. One
    z_n ~ q(z|x_n) per example; log q(z_n) is a log-mean-exp over all N posteriors, evaluated as
    matrix products in chunks of rows. Both terms are Monte Carlo estimates whose sum estimates
    the average KL; I(x; z) is at most log N.
    """
    N, L = mu.shape
    mu, logvar = mu.double(), logvar.double()
    z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=generator, device=mu.device,
                                                   dtype=mu.dtype)
    log_qz = torch.empty(N, dtype=torch.float64, device=mu.device)
    components = GaussianComponents(mu, logvar)
    for start in tqdm(range(0, N, chunk), desc="aggregate posterior", leave=False,
                      disable=None if progress else True):
        log_qz[start:start + chunk] = components.log_mixture(z[start:start + chunk])
    log_q_cond = log_normal(z, mu, logvar)  # (N,)
    log_pz = prior.double().log_prob(z)
    return {"mutual_information": (log_q_cond - log_qz).mean().item(),
            "marginal_kl": (log_qz - log_pz).mean().item(),
            "mutual_information_bound": math.log(N)}


def latent_plane(mu: torch.Tensor, dim_names: list[str]) -> tuple[torch.Tensor, torch.Tensor, tuple[str, str]]:
    """The plane the posterior means (N, L) are shown in: origin (L,), two orthonormal axes (2, L) and
    their names; points are (mu - origin) @ axes.T. z itself for L <= 2 (one axis for L = 1), its dimensions
    named by `dim_names`, else the top two principal components of mu around its mean. float64, on mu's device."""
    L = mu.shape[1]
    if L <= 2:
        return (torch.zeros(L, dtype=torch.float64, device=mu.device),
                torch.eye(2, L, dtype=torch.float64, device=mu.device), (dim_names[0], dim_names[1] if L == 2 else ""))
    centre = mu.double().mean(0)
    _, _, v = torch.linalg.svd(mu.double() - centre, full_matrices=False)
    return centre, v[:2], ("principal component 1", "principal component 2")
