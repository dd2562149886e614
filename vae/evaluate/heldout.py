"""The held-out negative ELBO of a split, in nats per example: what every epoch measures."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vae.data.split import Split
from vae.evaluate.estimators import active_dims
from vae.model.likelihoods import vae_loss
from vae.model.vae import VAE

EVAL_BATCH = 1000


@dataclass(frozen=True)
class Posteriors:
    """Per-example results of one encoding pass over a split."""

    mu: torch.Tensor  # (N, L) where each image sits in z (z1): the posterior mean (model.code's z1 part)
    logvar: torch.Tensor  # (N, L) of q(z|x) (under a flow, of its base Gaussian)
    recon: torch.Tensor  # (N,) distortion, one z sample per example, nats
    kl: torch.Tensor  # (N,) the rate, nats: analytic for a Gaussian posterior against N(0, I), else sampled
    kl_dims: torch.Tensor | None  # (N, D) the rate of each latent dimension (D = latent + latent2), where defined
    kl_top: torch.Tensor | None  # (N,) with two stochastic layers, the part of the rate z2 carries
    decoded: torch.Tensor  # (N, code_dim) what the decoder reads of each image: mu, and z2's mean beside it by skip


@torch.no_grad()
def encode_split(model: VAE, split: Split, seed: int, as_trained: bool = False) -> Posteriors:
    """Posterior parameters and single-sample ELBO terms of every example in `split`, under the likelihood
    evaluate.py measures with (`as_trained`: the one training minimizes, whose nats the training curves show).

    The noise comes from its own generator seeded with `seed`, so every evaluation of the same
    model gives the same numbers and the training random stream is left untouched.
    """
    model.eval()
    device = split.images.device
    gen = torch.Generator(device=device).manual_seed(seed)
    likelihood = model.likelihood if as_trained else model.likelihood.evaluation
    parts = []
    for idx in torch.arange(len(split), device=device).split(EVAL_BATCH):
        x = split.pixels(idx)
        out = model(x, model.noise(len(x), gen, device))
        terms = vae_loss(out.logits, x, out.rate, likelihood)
        code = out.mu if model.flow is None else model.code(x)
        decoded = code if model.code_dim == model.latent_dim else model.code(x)
        parts.append((code, out.logvar, terms.reconstruction, out.rate.kl, out.rate.kl_dims, out.rate.kl_top, decoded))
    return Posteriors(*(None if p[0] is None else torch.cat(p) for p in zip(*parts)))


def evaluate(model: VAE, split: Split, seed: int) -> dict[str, float]:
    """Mean negative ELBO, reconstruction (distortion) and KL (rate) in nats of the training objective's
    likelihood, and active units (of the layer next to x); with two stochastic layers also kl_z2, the part
    of the rate that z2 carries."""
    post = encode_split(model, split, seed, as_trained=True)
    recon, kl = post.recon.double().mean().item(), post.kl.double().mean().item()
    active = int(active_dims(model, post.mu, post.logvar).sum())
    nats = {"loss": recon + kl, "recon": recon, "kl": kl, "active_units": active}
    if post.kl_top is not None:
        nats["kl_z2"] = post.kl_top.double().mean().item()
    return nats
