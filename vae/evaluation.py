"""Held-out ELBO in nats per example, and the picture set drawn during training and evaluation."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from vae.checkpoint import load_checkpoint, load_state, resolve_checkpoint, run_dir_of
from vae.config import check_same_run, load_config, to_dict
from vae.data import Split, load_mnist
from vae.device import resolve_device
from vae.files import atomic_write_text
from vae.loss import vae_loss
from vae.model import VAE
from vae.viz import save_grid, save_pairs

EVAL_BATCH = 1000
SHOWN = 32  # images in each reconstruction grid
SAMPLES = 64  # images in the prior-sample grid


def fixed_latents(latent_dim: int, seed: int, device: torch.device) -> torch.Tensor:
    """The same SAMPLES draws from p(z) for a given seed, so sample grids compare across epochs."""
    return torch.randn(SAMPLES, latent_dim, generator=torch.Generator().manual_seed(seed)).to(device)


@torch.no_grad()
def evaluate(model: VAE, split: Split, seed: int) -> dict[str, float]:
    """Mean negative ELBO, reconstruction and KL over `split`, one z sample per example.

    The noise comes from its own generator seeded with `seed`, so every evaluation of the same
    model gives the same numbers and the training random stream is left untouched.
    """
    model.eval()
    device = split.images.device
    gen = torch.Generator(device=device).manual_seed(seed)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for idx in torch.arange(len(split), device=device).split(EVAL_BATCH):
        x = split.pixels(idx)
        logits, mu, logvar = model(x, gen)
        terms = vae_loss(logits, x, mu, logvar)
        sums += torch.stack([terms.total.sum(), terms.reconstruction.sum(), terms.kl.sum()]).double()
    loss, recon, kl = (sums / len(split)).tolist()
    return {"loss": loss, "recon": recon, "kl": kl}


@torch.no_grad()
def save_pictures(model: VAE, split: Split, fixed_z: torch.Tensor, digit: int, folder: Path,
                  suffix: str = "") -> list[Path]:
    """Originals over reconstructions (first test images, then one digit class) and prior samples.

    Reconstructions decode the posterior mean, so the grids change only when the model does.
    """
    model.eval()

    def reconstruct(x):
        return torch.sigmoid(model.decode(model.encode(x)[0]))

    paths = [folder / f"recon{suffix}.png", folder / f"digit{digit}{suffix}.png",
             folder / f"samples{suffix}.png"]
    x = split.pixels(torch.arange(min(SHOWN, len(split)), device=fixed_z.device))
    save_pairs(x, reconstruct(x), paths[0])
    x = split.pixels((split.labels == digit).nonzero().flatten()[:SHOWN])
    if len(x):
        save_pairs(x, reconstruct(x), paths[1])
    else:
        paths.pop(1)
    save_grid(torch.sigmoid(model.decode(fixed_z)), paths[-1])
    return paths


def evaluate_checkpoint(path: str | Path, overrides: list[str] = ()) -> dict:
    """Test-set ELBO of a checkpoint, its pictures and metrics.json, under <run dir>/eval/."""
    path = resolve_checkpoint(path)
    state, stored = load_checkpoint(path)
    cfg = load_config(None, overrides, base=to_dict(stored))
    check_same_run(stored, cfg)
    device = resolve_device(cfg.train.device)
    _, test = load_mnist(cfg.data.root, cfg.data.download, device)
    model = VAE(cfg.model).to(device)
    load_state(model, state["model"], path)

    t0 = time.perf_counter()
    metrics = {"checkpoint": str(path), "epoch": state["epoch"], "split": "test", "examples": len(test),
               "unit": "nats per example", **evaluate(model, test, cfg.train.seed),
               "seconds": time.perf_counter() - t0}
    out = run_dir_of(path) / "eval"
    out.mkdir(parents=True, exist_ok=True)
    save_pictures(model, test, fixed_latents(cfg.model.latent_dim, cfg.train.seed, device),
                  cfg.viz.digit, out)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics
