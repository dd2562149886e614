"""Per-image scores of how unusual an image is to a trained model, each in nats, higher = more unusual.

nll              -log p(x), the IWAE-k bound: what the model's likelihood says
rate             KL(q(z|x) || p(z)), the training objective's own KL: how far the image's code is from the prior
complexity       nll - L(x) ln 2 with L(x) a lossless compressor's code length in bits of the image as the likelihood
                 sees it, binary or 8-bit pixels (Serrà et al. 2020): the likelihood corrected for how simple the
                 image is, which deep likelihoods reward regardless of data; defined where the NLL is a code length
regret           -ELBO(x) - min over q of -ELBO(x; q): what refitting q(z|x) to the image alone gains over the
                 encoder's posterior (the likelihood regret of Xiao et al. 2020, with the posterior refit in place of
                 the encoder): an encoder fits the data it was trained on, not other data
typicality       |nll - the reference images' mean nll| (Nalisnick et al. 2019's typicality, of one image): an image
                 can be too likely to be typical, as well as too unlikely
kl_to_reference  KL(q(z|x) || q_ref(z)) against the reference images' aggregate posterior in place of the prior:
                 how far the image's code lies from where the reference data's codes lie
"""
from __future__ import annotations

import bz2
import io
import math
import zlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from vae.config.schema import SCORES, Config
from vae.data.split import Split
from vae.errors import UserError
from vae.evaluate.estimators import GaussianComponents, iwae_nll
from vae.evaluate.heldout import Posteriors
from vae.model.distributions import log_normal
from vae.model.vae import VAE, TwoLayerVAE

REGRET_BATCH = 500  # images refit at once
COMPONENT_CHUNK = 256  # rows of z against every reference posterior at once


def _png(image: np.ndarray, binary: bool) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image > 127 if binary else image).save(buffer, format="PNG", optimize=True)  # bool: 1 bit each
    return buffer.getvalue()


def _packed(image: np.ndarray, binary: bool) -> bytes:
    """The pixels as the likelihood sees them: a bit each for binary images, else a byte."""
    return np.packbits(image > 127).tobytes() if binary else image.tobytes()


# score.compressor -> (one image (H, W) or (H, W, 3) uint8, whether its pixels are binary) -> its compressed bytes
COMPRESSORS: dict[str, Callable[[np.ndarray, bool], bytes]] = {
    "png": _png,
    "bz2": lambda image, binary: bz2.compress(_packed(image, binary), 9),
    "zlib": lambda image, binary: zlib.compress(_packed(image, binary), 9),
}


def not_defined(model: VAE, binarized: bool) -> dict[str, str]:
    """The scores this model does not define, each with why (`binarized`: whether its data are binary pixels)."""
    why = {}
    if not binarized and not model.likelihood.evaluation.eight_bit:
        why["complexity"] = ("a Bernoulli likelihood of grey levels: its NLL is a cross-entropy of intensities, not a "
                             "code length of the images that a compressor's code length could be taken from "
                             "(binarize the data, or model 8-bit pixels with model.likelihood=logistic)")
    if model.flow is not None:
        why["regret"] = why["kl_to_reference"] = ("the flow posterior: its density at another image's z needs the "
                                                  "flow inverted dimension by dimension")
    elif isinstance(model, TwoLayerVAE):
        why["regret"] = "two stochastic layers: refitting q(z1|x) alone leaves q(z2|z1) the encoder's"
    return why


def chosen_scores(model: VAE, cfg: Config, asked: tuple[str, ...] = ()) -> tuple[str, ...]:
    """`asked`, else score.scores, else every score the model defines; a named score it does not define is refused."""
    asked = asked or cfg.score.scores
    undefined = not_defined(model, cfg.data.binarize != "none")
    bad = [s for s in asked if s in undefined]
    if bad:
        raise UserError(f"score.scores names {bad[0]}, which this model does not define ({undefined[bad[0]]}): "
                        f"leave it out")
    unknown = [s for s in asked if s not in SCORES]
    if unknown:
        raise UserError(f"no score {unknown[0]}: the scores are {', '.join(SCORES)}")
    return asked or tuple(s for s in SCORES if s not in undefined)


def compressed_bits(images: torch.Tensor, compressor: str, binary: bool = False) -> torch.Tensor:
    """Code lengths in bits of uint8 images (N, C, H, W), each compressed alone (`binary`: of its pixels as bits,
    0 or 255 each): (N,) float64."""
    pixels = images.cpu().permute(0, 2, 3, 1).numpy()  # (N, H, W, C)
    pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    compress = COMPRESSORS[compressor]
    return torch.tensor([8.0 * len(compress(np.ascontiguousarray(p), binary)) for p in pixels], dtype=torch.float64)


def refit_gain(model: VAE, prior, x: torch.Tensor, eps: torch.Tensor, steps: int, lr: float) -> torch.Tensor:
    """How much lower -ELBO(x) gets (B,) when q(z|x)'s mean and log-variance, from the encoder's, are refit to each
    image of x (B, D) by Adam, at the fixed noise eps (S, B, L): the best of the steps' values (so >= 0)."""
    likelihood = model.likelihood.evaluation

    def negative_elbo(mu, logvar):  # (B,), averaged over the fixed noise
        z = mu + torch.exp(0.5 * logvar) * eps  # (S, B, L)
        return -(likelihood.log_prob(model.decode(z), x) + prior.log_prob(z) - log_normal(z, mu, logvar)).mean(0)

    with torch.no_grad():
        mu, logvar = (t.float().clone().requires_grad_() for t in model.encode(x))
    adam = torch.optim.Adam([mu, logvar], lr=lr)
    losses = []  # each (B,): at the encoder's q, then after each step
    with torch.enable_grad():
        for _ in range(steps):
            loss = negative_elbo(mu, logvar)
            losses.append(loss.detach())
            mu.grad, logvar.grad = torch.autograd.grad(loss.sum(), [mu, logvar])
            adam.step()
        losses.append(negative_elbo(mu, logvar).detach())
    return losses[0] - torch.stack(losses).min(0).values


def regret(model: VAE, split: Split, steps: int, lr: float, samples: int, seed: int) -> torch.Tensor:
    """refit_gain of every image in `split`, each at its own `samples` draws of the noise: (N,) float64 nats."""
    device = split.images.device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        prior = model.prior_distribution()
    out = []
    for idx in tqdm(torch.arange(len(split), device=device).split(REGRET_BATCH), desc="regret", leave=False,
                    disable=None):
        eps = torch.randn((samples, len(idx), model.latent_dim), generator=gen, device=device)
        out.append(refit_gain(model, prior, split.pixels(idx), eps, steps, lr).double())
    return torch.cat(out)


def kl_to_reference(post: Posteriors, reference: Posteriors, samples: int, seed: int,
                    leave_out: bool = False) -> torch.Tensor:
    """KL(q(z|x) || q_ref(z)) of each image, q_ref = (1/M) sum_m q(z|x_m) over the M reference images, by `samples`
    draws of z ~ q(z|x): (N,) float64 nats. `leave_out`: the images are the reference's own, and each leaves its own
    component out of q_ref (which would otherwise count the image as its own neighbour)."""
    mu, logvar = post.mu.double(), post.logvar.double()
    gen = torch.Generator(device=mu.device).manual_seed(seed)
    components = GaussianComponents(reference.mu, reference.logvar)
    out = torch.empty(len(mu), dtype=torch.float64, device=mu.device)
    for start in tqdm(range(0, len(mu), COMPONENT_CHUNK), desc="KL to the reference", leave=False, disable=None):
        m, lv = mu[start:start + COMPONENT_CHUNK], logvar[start:start + COMPONENT_CHUNK]
        z = m + torch.exp(0.5 * lv) * torch.randn((samples, *m.shape), generator=gen, device=mu.device,
                                                  dtype=torch.float64)  # (S, c, L)
        own = torch.arange(start, start + len(m), device=mu.device).repeat(samples) if leave_out else None
        log_q_ref = components.log_mixture(z.reshape(-1, z.shape[-1]), own).view(samples, len(m))  # (S, c)
        out[start:start + len(m)] = (log_normal(z, m, lv) - log_q_ref).mean(0)
    return out


class Reference(NamedTuple):
    """What the scores of new images need of the reference images: their posteriors, and their mean NLL (None while
    the reference images themselves are scored: their own mean is taken)."""

    post: Posteriors
    nll_mean: float | None = None


def score_split(model: VAE, split: Split, post: Posteriors, reference: Reference | None, config: Config,
                scores: tuple[str, ...], is_reference: bool = False) -> dict[str, torch.Tensor]:
    """The `scores` of every image in `split` (whose encoding is `post`), each (N,) float64 nats on the CPU;
    `is_reference`: the images are the reference's own. The noise is seeded by eval.seed."""
    cfg, seed, binarized, out = config.score, config.eval.seed, config.data.binarize != "none", {}
    if {"nll", "complexity", "typicality"} & set(scores):
        nll = out["nll"] = iwae_nll(model, split, cfg.iwae_samples, seed)[0].double().cpu()
    if "rate" in scores:
        out["rate"] = post.kl.double()
    if "complexity" in scores:
        out["complexity"] = nll - compressed_bits(split.images, cfg.compressor, binarized) * math.log(2)
    if "typicality" in scores:
        out["typicality"] = (nll - (nll.mean().item() if is_reference else reference.nll_mean)).abs()
    if "regret" in scores:
        out["regret"] = regret(model, split, cfg.regret_steps, cfg.regret_lr, cfg.samples, seed)
    if "kl_to_reference" in scores:
        out["kl_to_reference"] = kl_to_reference(post, reference.post, cfg.samples, seed, leave_out=is_reference)
    return {name: out[name].cpu() for name in scores}
