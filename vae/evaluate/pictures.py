"""The pictures of a model: the grids drawn each epoch, and evaluate.py's full set."""
from __future__ import annotations

from pathlib import Path

import torch

from vae.config.schema import Config
from vae.data.split import Split
from vae.evaluate.estimators import latent_plane
from vae.evaluate.heldout import Posteriors
from vae.evaluate.plots import (
    plot_kl_per_dim,
    plot_latent_scatter,
    plot_nats_histogram,
    save_grid,
    save_labeled_rows,
    save_pairs,
)
from vae.model.vae import VAE, TwoLayerVAE

SHOWN = 32  # images in each reconstruction grid
SAMPLES = 64  # images in the prior-sample grid
INTERPOLATION_PAIRS = ((2, 7), (0, 6), (1, 8), (3, 5), (4, 9))
TRAVERSED_DIMS = 8
MAX_ROWS = 10  # classes shown in the per-class grid


def fixed_latents(noise_dim: int, seed: int, device: torch.device) -> torch.Tensor:
    """The same SAMPLES draws of the prior's noise for a given seed, so sample grids compare across epochs."""
    return torch.randn(SAMPLES, noise_dim, generator=torch.Generator().manual_seed(seed)).to(device)


@torch.no_grad()
def reconstruct(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) decoded from the code of each row of x (B, D) (its posterior mean): grids change only
    when the model does."""
    model.eval()
    return model.means(model.decode(model.code(x)))


def shaped(split: Split, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The images at `index` as rows (B, D) for the model and as pictures (B, C, H, W)."""
    x = split.pixels(index)
    return x, x.view(-1, *split.shape)


@torch.no_grad()
def save_pictures(model: VAE, split: Split, fixed_z: torch.Tensor, digit: int, folder: Path,
                  suffix: str = "", shown: int = SHOWN) -> list[Path]:
    """Originals over reconstructions (first test images, then one digit class) and prior samples."""
    model.eval()
    paths = [folder / f"recon{suffix}.png", folder / f"digit{digit}{suffix}.png",
             folder / f"samples{suffix}.png"]
    x, images = shaped(split, torch.arange(min(shown, len(split)), device=fixed_z.device))
    save_pairs(images, reconstruct(model, x), paths[0])
    x, images = shaped(split, (split.labels == digit).nonzero().flatten()[:shown])
    if len(x):
        save_pairs(images, reconstruct(model, x), paths[1])
    else:
        paths.pop(1)
    save_grid(model.means(model.generate(fixed_z)), paths[-1])
    return paths


def dim_names(model: VAE) -> list[str]:
    """The name of each dimension of the code the decoder reads: z0, z1, ... of one stochastic layer; z1[d], and
    z2[d] beside them under model.skip, of two."""
    if not isinstance(model, TwoLayerVAE):
        return [f"z{d}" for d in range(model.code_dim)]
    z2_dims = model.code_dim - model.latent_dim
    return [f"z1[{d}]" for d in range(model.latent_dim)] + [f"z2[{d}]" for d in range(z2_dims)]


@torch.no_grad()
def ranked_dims(model: VAE, post: Posteriors, dim_kl: list[float] | None, dim_kl_z2: list[float] | None = None
                ) -> tuple[list[int], list[str]]:
    """The dims of the code the decoder reads (z1's, and z2's under model.skip), most informative first, and a label
    of each: by their KL (z1's `dim_kl`, z2's `dim_kl_z2`) where it is defined per dimension, else by the variance
    of the codes across the images."""
    if dim_kl is not None and model.code_dim > len(dim_kl):
        dim_kl = dim_kl + dim_kl_z2 if dim_kl_z2 is not None else None
    if dim_kl is not None:
        return sorted(range(len(dim_kl)), key=lambda d: -dim_kl[d]), [f"{v:.1f} nats" for v in dim_kl]
    variance = post.decoded.double().var(0).tolist()
    return sorted(range(len(variance)), key=lambda d: -variance[d]), [f"variance {v:.2f}" for v in variance]


def save_evaluation_pictures(model: VAE, split: Split, post: Posteriors, cfg: Config, dim_kl: list[float] | None,
                             active: list[bool], per_example: dict[str, torch.Tensor], out: Path,
                             dim_kl_z2: list[float] | None = None) -> None:
    """evaluate.py's pictures in `out`: grids, digits, interpolations, traversals, the latent space, the worst."""
    device, names = post.mu.device, split.classes
    save_pictures(model, split, fixed_latents(model.prior_noise_dim, cfg.train.seed, device), cfg.viz.digit,
                  out, shown=64)

    first = {c: (split.labels == c).nonzero().flatten() for c in range(len(names))}
    shown = [c for c in range(min(len(names), MAX_ROWS)) if len(first[c]) >= 8]  # the first classes with 8 images
    if shown:
        x, originals = shaped(split, torch.cat([first[c][:8] for c in shown]))
        rows = torch.stack([originals, reconstruct(model, x)]).unflatten(1, (len(shown), 8)).transpose(0, 1)
        save_labeled_rows(rows.flatten(1, 2), [names[c] for c in shown], out / "digits.png",
                          "8 test images per class | their reconstructions")

    steps = torch.linspace(0, 1, 10, device=device)[:, None]
    classes = INTERPOLATION_PAIRS if len(names) >= 10 else [(c, c + 1) for c in range(min(len(names) - 1, 5))]
    pairs = [(first[a][0], first[b][0], f"{names[a]} -> {names[b]}") for a, b in classes
             if len(first[a]) and len(first[b])]
    if len(names) < 2:  # unlabelled: between the first test images
        pairs = [(i, i + 1, f"image {i} -> {i + 1}") for i in range(0, min(len(split), 10) - 1, 2)]
    if pairs:
        z = post.decoded
        lines = [model.means(model.decode(z[a] * (1 - steps) + z[b] * steps)) for a, b, _ in pairs]
        save_labeled_rows(torch.stack(lines), [label for _, _, label in pairs],
                          out / "interpolation.png", "linear interpolation between posterior means")

    order, label = ranked_dims(model, post, dim_kl, dim_kl_z2)
    dims = dim_names(model)
    top = order[:TRAVERSED_DIMS]
    base = post.decoded[first[cfg.viz.digit][0]] if len(first[cfg.viz.digit]) else torch.zeros_like(post.decoded[0])
    values = torch.linspace(-3, 3, 11, device=device)
    lines = []
    for d in top:
        z = base.repeat(len(values), 1)
        z[:, d] = values
        lines.append(model.means(model.decode(z)))
    save_labeled_rows(torch.stack(lines), [f"{dims[d]} {label[d]}" for d in top], out / "traversal.png",
                      f"z_d from -3 to 3 around a {names[cfg.viz.digit]}, most informative dims first")

    if dim_kl is not None:
        plot_kl_per_dim(dim_kl, active, out / "kl_per_dim.png")
    save_latent_space(model, split, post, cfg, out)
    plot_nats_histogram(per_example, out / "nats_histogram.png")
    x, images = shaped(split, post.recon.argsort(descending=True)[:16])
    save_pairs(images, reconstruct(model, x), out / "worst.png")


@torch.no_grad()
def save_latent_space(model: VAE, split: Split, post: Posteriors, cfg: Config, out: Path) -> None:
    """The posterior means coloured by label and, for a 2-D latent under N(0, I), the decoded manifold."""
    device = post.mu.device
    if cfg.model.latent_dim == 2 and not cfg.model.latent2_dim and cfg.model.prior == "normal":
        # Decode a 20 x 20 grid of prior quantiles: z0 grows to the right, z1 grows upwards.
        # (With two stochastic layers z1's prior is not N(0, I): no manifold then.)
        grid = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, 20, device=device))
        z1, z0 = torch.meshgrid(grid.flip(0), grid, indexing="ij")
        z = torch.stack([z0, z1], dim=-1).reshape(-1, 2)
        save_grid(model.means(model.decode(z)), out / "manifold.png", nrow=20)
    origin, axes, axis_names = latent_plane(post.decoded, dim_names(model))  # the plane the report's live map shows
    points = (post.decoded.double() - origin) @ axes.T
    plot_latent_scatter(points, split.labels, axis_names, split.classes, out / "latent_scatter.png")
