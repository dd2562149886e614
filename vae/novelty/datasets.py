"""How different two datasets are, as a trained model's encoder sees them: the KL between their aggregate posteriors
in nats, and a two-sample test of "same distribution or not" with a permutation p-value.

scipy does the resampling: `scipy.stats.bootstrap` (the KL's interval) and `scipy.stats.permutation_test` (the
test's p-value, with its +1 correction that keeps the test's level), over statistics computed here.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy import stats

from vae.evaluate.estimators import GaussianComponents

TEST_IMAGES = 2000  # the test's kernel covers at most this many images of each side (a random subset, seeded)
PERMUTED = 100  # permutations whose statistics are computed at once


def aggregate_kl_terms(new_mu: torch.Tensor, new_logvar: torch.Tensor, ref_mu: torch.Tensor, ref_logvar: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
    """log q_new(z_i) - log q_ref(z_i) at z_i ~ q(z|x_i), one draw per new image: (N,) float64, whose mean estimates
    KL(q_new(z) || q_ref(z)) between the aggregate posteriors q(z) = (1/N) sum_n q(z|x_n).

    Each density is a mixture of exactly s = min(N - 1, M) posteriors, so that neither side's estimate of a
    log-density is biased more than the other's (a log of a mean of s terms is biased low, less so as s grows):
    z_i's own side leaves its own component out (with it the estimate counts x_i as its own neighbour, and
    q_new(z_i) is too high wherever posteriors are narrower than the data's spread): the new images are cut into
    groups of s + 1, each image's mixture the other s of its group (the few left over take s of the first group);
    the reference images into groups of s (a remainder of fewer is left out), and log q_ref is the mean over them.
    """
    n, m = len(new_mu), len(ref_mu)
    if n < 2:
        raise ValueError("the KL between aggregate posteriors needs at least 2 new images")
    new_mu, new_logvar, ref_mu, ref_logvar = (t.double() for t in (new_mu, new_logvar, ref_mu, ref_logvar))
    z = new_mu + torch.exp(0.5 * new_logvar) * torch.randn(new_mu.shape, generator=generator, device=new_mu.device,
                                                           dtype=torch.float64)
    s = min(n - 1, m)
    log_q_new = torch.empty(n, dtype=torch.float64, device=z.device)
    order = torch.randperm(n, generator=generator, device=z.device)
    groups = order[:n // (s + 1) * (s + 1)].view(-1, s + 1)  # each image among s others
    for group in groups:
        own = torch.arange(s + 1, device=z.device)  # z[group][j]'s own component is the group's j-th
        log_q_new[group] = GaussianComponents(new_mu[group], new_logvar[group]).log_mixture(z[group], own)
    rest = order[len(groups) * (s + 1):]  # fewer than s + 1 left over: each against s images of the first group
    if len(rest):
        log_q_new[rest] = GaussianComponents(new_mu[groups[0, :s]], new_logvar[groups[0, :s]]).log_mixture(z[rest])
    ref_groups = torch.randperm(m, generator=generator, device=z.device)[:m // s * s].view(-1, s)
    log_q_ref = torch.stack([GaussianComponents(ref_mu[g], ref_logvar[g]).log_mixture(z) for g in ref_groups]).mean(0)
    return log_q_new - log_q_ref


def aggregate_kl(new_mu, new_logvar, ref_mu, ref_logvar, seed: int, resamples: int) -> dict[str, float]:
    """KL(q_new(z) || q_ref(z)) in nats with a 95% percentile bootstrap interval over the new images' terms."""
    terms = aggregate_kl_terms(new_mu, new_logvar, ref_mu, ref_logvar,
                               torch.Generator(device=new_mu.device).manual_seed(seed)).cpu().numpy()
    interval = stats.bootstrap((terms,), np.mean, n_resamples=resamples, confidence_level=0.95, method="percentile",
                               rng=np.random.default_rng(seed)).confidence_interval
    return {"kl": float(terms.mean()), "low": float(interval.low), "high": float(interval.high)}


def rbf_kernel(x: torch.Tensor) -> tuple[np.ndarray, float]:
    """exp(-|x_i - x_j|^2 / (2 h^2)) of the rows of x (P, L), h the median distance between them: (P, P), h."""
    x = x.double()
    sq = (x.pow(2).sum(1)[:, None] + x.pow(2).sum(1)[None] - 2 * x @ x.T).clamp_min(0)
    h2 = sq[torch.triu_indices(len(x), len(x), 1, device=x.device).unbind()].median().clamp_min(1e-12)
    return torch.exp(-sq / (2 * h2)).cpu().numpy(), math.sqrt(h2.item())


def mmd_test(new: torch.Tensor, ref: torch.Tensor, permutations: int, seed: int) -> dict[str, float]:
    """Is `new` (N, L) drawn from the distribution of `ref` (M, L)? The squared maximum mean discrepancy (Gretton et
    al. 2012; its biased V-statistic) under a Gaussian kernel of the median distance, and its p-value against
    random reassignments of the pooled rows to the two sides (at most TEST_IMAGES of each, a seeded subset)."""
    gen = torch.Generator().manual_seed(seed)
    new, ref = (t[torch.randperm(len(t), generator=gen)[:TEST_IMAGES].to(t.device)] for t in (new, ref))
    kernel, bandwidth = rbf_kernel(torch.cat([new, ref]))
    row_sums = kernel.sum(1)
    n, m, total = len(new), len(ref), kernel.sum()

    def mmd2(x_index, y_index, axis=-1):  # index arrays (..., n), (..., m) into the pooled rows
        x = np.atleast_2d(np.asarray(x_index, dtype=np.int64))
        chosen = np.zeros((len(x), n + m))
        chosen[np.arange(len(x))[:, None], x] = 1.0  # (B, P) which rows are on the new side
        xx = np.einsum("bp,bp->b", chosen @ kernel, chosen)
        x_all = chosen @ row_sums
        xy, yy = x_all - xx, total - 2 * x_all + xx
        out = xx / n**2 + yy / m**2 - 2 * xy / (n * m)
        return out if np.ndim(x_index) > 1 else out[0]

    result = stats.permutation_test((np.arange(n), np.arange(n, n + m)), mmd2, permutation_type="independent",
                                    vectorized=True, n_resamples=permutations, alternative="greater", batch=PERMUTED,
                                    rng=np.random.default_rng(seed))
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue),
            "bandwidth": bandwidth, "new_images": n, "reference_images": m}
