"""Held-out ELBO in nats per example, and the picture set drawn during training."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from vae.data import Split
from vae.diagnostics import active_units
from vae.loss import vae_loss
from vae.model import VAE
from vae.viz import save_grid, save_pairs

EVAL_BATCH = 1000
SHOWN = 32  # images in each reconstruction grid
SAMPLES = 64  # images in the prior-sample grid


@dataclass(frozen=True)
class Posteriors:
    """Per-example results of one encoding pass over a split."""

    mu: torch.Tensor  # (N, L)
    logvar: torch.Tensor  # (N, L)
    recon: torch.Tensor  # (N,) distortion, one z sample per example, nats
    kl_dims: torch.Tensor  # (N, D) the rate of each latent dimension (D = latent + latent2), nats

    @property
    def kl(self) -> torch.Tensor:
        """(N,) the rate, nats (analytic for one stochastic layer)."""
        return self.kl_dims.sum(-1)


def fixed_latents(noise_dim: int, seed: int, device: torch.device) -> torch.Tensor:
    """The same SAMPLES draws of the prior's noise for a given seed, so sample grids compare across epochs."""
    return torch.randn(SAMPLES, noise_dim, generator=torch.Generator().manual_seed(seed)).to(device)


@torch.no_grad()
def encode_split(model: VAE, split: Split, seed: int) -> Posteriors:
    """Posterior parameters and single-sample ELBO terms of every example in `split`.

    The noise comes from its own generator seeded with `seed`, so every evaluation of the same
    model gives the same numbers and the training random stream is left untouched.
    """
    model.eval()
    device = split.images.device
    gen = torch.Generator(device=device).manual_seed(seed)
    parts = []
    for idx in torch.arange(len(split), device=device).split(EVAL_BATCH):
        x = split.pixels(idx)
        out = model(x, model.noise(len(x), gen, device))
        terms = vae_loss(out.logits, x, out.rate)
        parts.append((out.mu, out.logvar, terms.reconstruction, out.rate.kl_dims))
    return Posteriors(*(torch.cat(p) for p in zip(*parts)))


def evaluate(model: VAE, split: Split, seed: int) -> dict[str, float]:
    """Mean negative ELBO, reconstruction (distortion) and KL (rate) in nats, and active units (of
    the layer next to x); with two stochastic layers also kl_z2, the part of the rate that z2 carries."""
    post = encode_split(model, split, seed)
    recon, kl = post.recon.double().mean().item(), post.kl.double().mean().item()
    nats = {"loss": recon + kl, "recon": recon, "kl": kl, "active_units": active_units(post.mu)}
    if post.kl_dims.shape[1] > model.latent_dim:
        nats["kl_z2"] = post.kl_dims[:, model.latent_dim:].double().sum(1).mean().item()
    return nats


@torch.no_grad()
def reconstruct(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """Bernoulli means decoded from the posterior mean: the grids change only when the model does."""
    model.eval()
    return torch.sigmoid(model.decode(model.encode(x)[0]))


@torch.no_grad()
def save_pictures(model: VAE, split: Split, fixed_z: torch.Tensor, digit: int, folder: Path,
                  suffix: str = "", shown: int = SHOWN) -> list[Path]:
    """Originals over reconstructions (first test images, then one digit class) and prior samples."""
    model.eval()
    paths = [folder / f"recon{suffix}.png", folder / f"digit{digit}{suffix}.png",
             folder / f"samples{suffix}.png"]
    x = split.pixels(torch.arange(min(shown, len(split)), device=fixed_z.device))
    save_pairs(x, reconstruct(model, x), paths[0])
    x = split.pixels((split.labels == digit).nonzero().flatten()[:shown])
    if len(x):
        save_pairs(x, reconstruct(model, x), paths[1])
    else:
        paths.pop(1)
    save_grid(torch.sigmoid(model.generate(fixed_z)), paths[-1])
    return paths
