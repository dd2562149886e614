"""evaluate.py's work: a checkpoint's ELBO split, IWAE NLL, rate split and pictures, in <run>/eval/."""
from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm import tqdm

from vae import rundir
from vae.checkpoint import load_checkpoint, load_state, resolve_checkpoint, run_dir_of
from vae.config import Config, check_same_run, load_config, to_dict
from vae.data import PIXELS, TRAIN_DRAW, Split, load_data
from vae.device import resolve_device
from vae.diagnostics import ACTIVE_THRESHOLD, active_units, importance_weighted_bound, rate_split
from vae.evaluation import Posteriors, encode_split, fixed_latents, reconstruct, save_pictures
from vae.files import atomic_write_text
from vae.loss import bernoulli_log_likelihood
from vae.model import VAE, TwoLayerVAE, build_model
from vae.report import write_report
from vae.viz import (plot_kl_per_dim, plot_latent_scatter, plot_nats_histogram, save_grid, save_labeled_rows,
                     save_pairs)

IWAE_EXAMPLES = 100  # examples per IWAE batch
IWAE_SAMPLES_PER_CHUNK = {"cpu": 4096, "cuda": 131072}  # z's decoded at once (memory vs speed)
INTERPOLATION_PAIRS = ((2, 7), (0, 6), (1, 8), (3, 5), (4, 9))
TRAVERSED_DIMS = 8
BITS_PER_NAT = 1 / math.log(2)


def bits_per_dim(nats: float) -> float:
    return nats * BITS_PER_NAT / PIXELS


TARGETS = {
    "none": "pixel intensities in [0, 1] as Bernoulli targets (not binarized, so bits/dim is a "
            "cross-entropy, not a code length)",
    "dynamic": "binary pixels: the split binarized once, seeded by data.seed (training resampled them)",
    "static": "binary pixels: the split binarized once, seeded by data.seed",
}


@torch.no_grad()
def iwae_nll(model: VAE, split: Split, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example IWAE-k estimate of -log p(x) and the k-sample negative ELBO, each (N,)."""
    device = split.images.device
    gen = torch.Generator(device=device).manual_seed(seed)
    chunk = max(1, IWAE_SAMPLES_PER_CHUNK.get(device.type, 4096) // IWAE_EXAMPLES)

    nll, neg_elbo = [], []
    for idx in tqdm(torch.arange(len(split), device=device).split(IWAE_EXAMPLES), desc=f"IWAE k={k}",
                    leave=False, disable=None):
        x = split.pixels(idx)

        def log_weight(eps):  # eps (s, B, noise_dim) -> (s, B)
            out = model(x, eps)
            return bernoulli_log_likelihood(out.logits, x) + out.rate.log_ratio
        log_px, elbo = importance_weighted_bound(log_weight, (len(x), model.noise_dim), k, chunk, gen, device)
        nll.append(-log_px)
        neg_elbo.append(-elbo)
    return torch.cat(nll), torch.cat(neg_elbo)


@torch.no_grad()
def top_layer_means(model: TwoLayerVAE, post: Posteriors, seed: int, samples: int = 16) -> torch.Tensor:
    """E_q[z2|x] = E_{z1 ~ q(z1|x)}[mu2(z1)] of every example, over `samples` draws of z1: (N, latent2)."""
    gen = torch.Generator(device=post.mu.device).manual_seed(seed)
    eps = torch.randn((samples, *post.mu.shape), generator=gen, device=post.mu.device)
    return model.encoder2(model.reparameterize(post.mu, post.logvar, eps)).chunk(2, dim=-1)[0].mean(0)


@contextmanager
def timed(seconds: dict, name: str):
    t0 = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - t0, 3)


def analyze(model: VAE, split: Split, cfg: Config, out: Path) -> dict:
    """All the numbers (returned, JSON-ready) and pictures (written to `out`) for one model."""
    k, seed, seconds = cfg.eval.iwae_samples, cfg.eval.seed, {}
    with timed(seconds, "encode"):
        post = encode_split(model, split, seed)
    with timed(seconds, "iwae"):
        nll, neg_elbo_k = iwae_nll(model, split, k, seed)
    with timed(seconds, "aggregate_posterior"):
        gen = torch.Generator(device=post.mu.device).manual_seed(seed)
        # against p(z) = N(0, I): one stochastic layer only (with two, z1's prior is p(z1|z2))
        rates = None if cfg.model.latent2_dim else rate_split(post.mu, post.logvar, generator=gen, progress=True)

    distortion, rate = post.recon.double().mean().item(), post.kl.double().mean().item()
    layer_nats = post.kl_dims.double().mean(0).split([cfg.model.latent_dim, cfg.model.latent2_dim])
    dim_kl = layer_nats[0].tolist()  # the layer next to x
    variance = post.mu.double().var(0)  # Cov_x(E_q[z_d]): what makes a unit active
    active = (variance > ACTIVE_THRESHOLD).tolist()
    nll_mean, neg_elbo_k_mean = nll.double().mean().item(), neg_elbo_k.double().mean().item()
    metrics = {
        "split": cfg.eval.split, "examples": len(split), "latent_dim": cfg.model.latent_dim,
        "unit": "nats per example unless named otherwise",
        "protocol": {"targets": TARGETS[cfg.data.binarize], "binarize": cfg.data.binarize,
                     "data_seed": cfg.data.seed, "val_size": cfg.data.val_size, "iwae_samples": k, "seed": seed,
                     "elbo": "one z sample per example for distortion; analytic KL"
                             + ("" if not cfg.model.latent2_dim else " of z2, a one-sample estimate for z1")},
        "negative_elbo": distortion + rate, "distortion": distortion, "rate": rate,
        "negative_elbo_bits_per_dim": bits_per_dim(distortion + rate),
        "nll_iwae": nll_mean, "nll_iwae_bits_per_dim": bits_per_dim(nll_mean),
        "negative_elbo_k_samples": neg_elbo_k_mean,
        "inference_gap": neg_elbo_k_mean - nll_mean,
        "active_units": sum(active),
        "kl_per_dim": dim_kl, "posterior_mean_variance_per_dim": variance.tolist(),
        "rate_split": rates and {**rates, "sum": rates["mutual_information"] + rates["marginal_kl"],
                                 "average_kl": rate},
        "rate_per_layer": [nats.sum().item() for nats in layer_nats if len(nats)],
        **({"kl_per_dim_z2": layer_nats[1].tolist(),
            "active_units_z2": active_units(top_layer_means(model, post, seed))} if cfg.model.latent2_dim else {}),
    }
    with timed(seconds, "pictures"):
        draw(model, split, post, cfg, dim_kl, active,
             {"negative ELBO": post.recon + post.kl, f"IWAE-{k} NLL": nll}, out)
    return {**metrics, "seconds": seconds}


@torch.no_grad()
def draw(model: VAE, split: Split, post: Posteriors, cfg: Config, dim_kl: list[float], active: list[bool],
         per_example: dict[str, torch.Tensor], out: Path) -> None:
    device = post.mu.device
    decode = lambda z: torch.sigmoid(model.decode(z))  # noqa: E731 - Bernoulli means
    save_pictures(model, split, fixed_latents(model.noise_dim, cfg.train.seed, device), cfg.viz.digit,
                  out, shown=64)

    first = {c: (split.labels == c).nonzero().flatten() for c in range(10)}
    rows = [split.pixels(first[c][:8]) for c in range(10) if len(first[c])]
    if rows and all(len(r) == 8 for r in rows):
        originals = torch.stack(rows)  # (10, 8, 784)
        recons = reconstruct(model, originals.reshape(-1, PIXELS)).reshape(originals.shape)
        save_labeled_rows(torch.cat([originals, recons], dim=1), [str(c) for c in range(10)],
                          out / "digits.png", "8 test images per digit | their reconstructions")

    steps = torch.linspace(0, 1, 10, device=device)[:, None]
    pairs = [(a, b) for a, b in INTERPOLATION_PAIRS if len(first[a]) and len(first[b])]
    if pairs:
        lines = [decode(post.mu[first[a][0]] * (1 - steps) + post.mu[first[b][0]] * steps) for a, b in pairs]
        save_labeled_rows(torch.stack(lines), [f"{a} -> {b}" for a, b in pairs], out / "interpolation.png",
                          "linear interpolation between posterior means")

    top = sorted(range(len(dim_kl)), key=lambda d: -dim_kl[d])[:TRAVERSED_DIMS]
    base = post.mu[first[cfg.viz.digit][0]] if len(first[cfg.viz.digit]) else torch.zeros_like(post.mu[0])
    values = torch.linspace(-3, 3, 11, device=device)
    lines = []
    for d in top:
        z = base.repeat(len(values), 1)
        z[:, d] = values
        lines.append(decode(z))
    save_labeled_rows(torch.stack(lines), [f"z{d} {dim_kl[d]:.1f} nats" for d in top], out / "traversal.png",
                      f"z_d from -3 to 3 around a {cfg.viz.digit}, most informative dims first")

    plot_kl_per_dim(dim_kl, active, out / "kl_per_dim.png")
    if cfg.model.latent_dim == 2:
        points, names = post.mu, ("z0", "z1")
        # Decode a 20 x 20 grid of prior quantiles: z0 grows to the right, z1 grows upwards.
        # (With two stochastic layers z1's prior is not N(0, I): no manifold then.)
        if not cfg.model.latent2_dim:
            grid = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, 20, device=device))
            z1, z0 = torch.meshgrid(grid.flip(0), grid, indexing="ij")
            save_grid(decode(torch.stack([z0, z1], dim=-1).reshape(-1, 2)), out / "manifold.png", nrow=20)
    elif cfg.model.latent_dim == 1:
        points, names = torch.cat([post.mu, torch.zeros_like(post.mu)], 1), ("z0", "")
    else:
        centred = post.mu - post.mu.mean(0)
        _, _, v = torch.linalg.svd(centred.double(), full_matrices=False)
        points, names = centred.double() @ v[:2].T, ("principal component 1", "principal component 2")
    plot_latent_scatter(points, split.labels, names, out / "latent_scatter.png")

    plot_nats_histogram(per_example, out / "nats_histogram.png")
    worst = post.recon.argsort(descending=True)[:16]
    x = split.pixels(worst)
    save_pairs(x, reconstruct(model, x), out / "worst.png")


def evaluate_checkpoint(path: str | Path, overrides: list[str] = ()) -> dict:
    """Everything evaluate.py reports for one checkpoint; writes <run>/eval/ and <run>/report.html."""
    path = resolve_checkpoint(path)
    state, stored = load_checkpoint(path)
    cfg = load_config(None, overrides, base=to_dict(stored))
    check_same_run(stored, cfg)
    device = resolve_device(cfg.train.device)
    splits = load_data(cfg.data, device)
    model = build_model(cfg.model).to(device)
    load_state(model, state["model"], path)
    model.eval()

    run_dir = run_dir_of(path) or path.resolve().parent
    rows = rundir.read_metrics(run_dir)  # for the report; read now so a bad file fails before the work
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    split = getattr(splits, cfg.eval.split)
    if cfg.eval.split == "train" and cfg.data.binarize == "dynamic":
        split = split.binarized(cfg.data.seed + TRAIN_DRAW)  # one fixed draw, as the other splits have
    metrics = {"checkpoint": str(path), "epoch": state["epoch"],
               "steps_into_next_epoch": state["progress"]["step"] if state["progress"] else 0,
               "device": str(device), **analyze(model, split, cfg, out)}
    metrics["seconds"] = {**metrics["seconds"], "total": round(time.perf_counter() - t0, 3)}
    metrics["report"] = str(run_dir / "report.html")
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_report(run_dir, cfg, metrics, rows)
    return metrics
