"""Per-image scores of how unusual an image is to a trained model, each in nats, higher = more unusual.

nll              -log p(x), the IWAE-k bound: what the model's likelihood says
rate             KL(q(z|x) || p(z)), the training objective's own KL: how far the image's code is from the prior
complexity       nll - L(x) ln 2 with L(x) a lossless compressor's code length in bits (Serrà et al. 2020): the
                 likelihood corrected for how simple the image is, which deep likelihoods reward regardless of data
regret           -ELBO(x) - min over q of -ELBO(x; q): what refitting q(z|x) to the image alone gains over the
                 encoder's posterior (the likelihood regret of Xiao et al. 2020, with the posterior refit in place of
                 the encoder): an encoder fits the data it was trained on, not other data
kl_to_reference  KL(q(z|x) || q_ref(z)) against the reference images' aggregate posterior in place of the prior:
                 how far the image's code lies from where the reference data's codes lie
"""
from __future__ import annotations

import bz2
import io
import math
import zlib
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from vae.config.schema import SCORES, ScoreConfig
from vae.data.split import Split
from vae.errors import UserError
from vae.evaluate.estimators import GaussianComponents, iwae_nll
from vae.evaluate.heldout import Posteriors, encode_split
from vae.model.distributions import log_normal
from vae.model.vae import VAE

REGRET_BATCH = 500  # images refit at once
COMPONENT_CHUNK = 256  # rows of z against every reference posterior at once


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# score.compressor -> one image (H, W) or (H, W, 3) uint8 -> its compressed bytes
COMPRESSORS: dict[str, Callable[[np.ndarray], bytes]] = {
    "png": _png,
    "bz2": lambda image: bz2.compress(image.tobytes(), 9),
    "zlib": lambda image: zlib.compress(image.tobytes(), 9),
}


def not_defined(model: VAE) -> dict[str, str]:
    """The scores this model does not define, each with why."""
    why = {}
    if model.flow is not None:
        why["regret"] = why["kl_to_reference"] = ("the flow posterior: its density at another image's z needs the "
                                                  "flow inverted dimension by dimension")
    elif hasattr(model, "latent2_dim"):
        why["regret"] = "two stochastic layers: refitting q(z1|x) alone leaves q(z2|z1) the encoder's"
    return why


def chosen_scores(model: VAE, cfg: ScoreConfig) -> tuple[str, ...]:
    """score.scores, or every score the model defines when it is empty; a named score it does not define is
    refused."""
    undefined = not_defined(model)
    asked = [s for s in cfg.scores if s in undefined]
    if asked:
        raise UserError(f"score.scores names {asked[0]}, which this model does not define ({undefined[asked[0]]}): "
                        f"leave it out")
    return cfg.scores or tuple(s for s in SCORES if s not in undefined)


def compressed_bits(images: torch.Tensor, compressor: str) -> torch.Tensor:
    """Code lengths in bits of uint8 images (N, C, H, W), each compressed alone: (N,) float64."""
    pixels = images.cpu().permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    compress = COMPRESSORS[compressor]
    return torch.tensor([8.0 * len(compress(np.ascontiguousarray(p))) for p in pixels], dtype=torch.float64)


def regret(model: VAE, split: Split, steps: int, lr: float, samples: int, seed: int) -> torch.Tensor:
    """-ELBO under the encoder's q(z|x) minus the least -ELBO of a q(z|x) refit to each image by Adam (its mean and
    log-variance, from the encoder's), both at the same `samples` draws of the noise: (N,) float64 nats, >= 0."""
    device = split.images.device
    gen = torch.Generator(device=device).manual_seed(seed)
    likelihood = model.likelihood.evaluation
    with torch.no_grad():
        prior = model.prior_distribution()
    out = []
    for idx in tqdm(torch.arange(len(split), device=device).split(REGRET_BATCH), desc="regret", leave=False,
                    disable=None):
        x = split.pixels(idx)
        with torch.no_grad():
            mu0, logvar0 = (t.float() for t in model.encode(x))
        eps = torch.randn((samples, *mu0.shape), generator=gen, device=device)

        def negative_elbo(mu, logvar):  # (B,), averaged over the fixed noise
            z = mu + torch.exp(0.5 * logvar) * eps  # (S, B, L)
            log_w = likelihood.log_prob(model.decode(z), x) + prior.log_prob(z) - log_normal(z, mu, logvar)
            return -log_w.mean(0)

        mu, logvar = mu0.clone().requires_grad_(), logvar0.clone().requires_grad_()
        adam = torch.optim.Adam([mu, logvar], lr=lr)
        with torch.enable_grad():
            losses = []  # each (B,): at the encoder's q, then after each step
            for _ in range(steps):
                loss = negative_elbo(mu, logvar)
                losses.append(loss.detach())
                mu.grad, logvar.grad = torch.autograd.grad(loss.sum(), [mu, logvar])
                adam.step()
            losses.append(negative_elbo(mu, logvar).detach())
        out.append((losses[0] - torch.stack(losses).min(0).values).double())
    return torch.cat(out)


def kl_to_reference(post: Posteriors, reference: Posteriors, samples: int, seed: int,
                    leave_out: bool = False) -> torch.Tensor:
    """KL(q(z|x) || q_ref(z)) of each image, q_ref = (1/M) sum_m q(z|x_m) over the M reference images, by `samples`
    draws of z ~ q(z|x): (N,) float64 nats. `leave_out`: the images are the reference's own, and each leaves its own
    component out of q_ref (which would otherwise count the image as its own neighbour)."""
    mu, logvar = post.mu.double(), post.logvar.double()
    gen = torch.Generator(device=mu.device).manual_seed(seed)
    components = GaussianComponents(reference.mu, reference.logvar)
    M = len(reference.mu) - leave_out
    out = torch.empty(len(mu), dtype=torch.float64, device=mu.device)
    for start in tqdm(range(0, len(mu), COMPONENT_CHUNK), desc="KL to the reference", leave=False, disable=None):
        m, lv = mu[start:start + COMPONENT_CHUNK], logvar[start:start + COMPONENT_CHUNK]
        z = m + torch.exp(0.5 * lv) * torch.randn((samples, *m.shape), generator=gen, device=mu.device,
                                                  dtype=torch.float64)  # (S, c, L)
        log_components = components.log_prob(z.reshape(-1, z.shape[-1])).view(samples, len(m), -1)  # (S, c, M)
        if leave_out:
            rows = torch.arange(start, start + len(m), device=mu.device)
            log_components[:, torch.arange(len(m)), rows] = -math.inf
        log_q_ref = torch.logsumexp(log_components, dim=-1) - math.log(M)  # (S, c)
        out[start:start + len(m)] = (log_normal(z, m, lv) - log_q_ref).mean(0)
    return out


def score_split(model: VAE, split: Split, post: Posteriors, reference: Posteriors, cfg: ScoreConfig,
                scores: tuple[str, ...], seed: int, is_reference: bool = False) -> dict[str, torch.Tensor]:
    """The `scores` of every image in `split` (whose encoding is `post`), each (N,) float64 nats on the CPU."""
    out = {}
    if "nll" in scores or "complexity" in scores:
        nll = iwae_nll(model, split, cfg.iwae_samples, seed)[0].double()
        out["nll"] = nll
    if "rate" in scores:
        out["rate"] = post.kl.double()
    if "complexity" in scores:
        out["complexity"] = nll.cpu() - compressed_bits(split.images, cfg.compressor) * math.log(2)
    if "regret" in scores:
        out["regret"] = regret(model, split, cfg.regret_steps, cfg.regret_lr, cfg.samples, seed)
    if "kl_to_reference" in scores:
        out["kl_to_reference"] = kl_to_reference(post, reference, cfg.samples, seed, leave_out=is_reference)
    return {name: out[name].cpu() for name in scores}

