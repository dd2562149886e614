"""eval/explorer.json: what report.html's live decoder needs (weights, test codes, the latent map).

The page (vae/evaluate/explorer.js) runs the MLP decoder's forward pass itself, so the weights travel as
base64 of little-endian float32: 4/3 bytes of text per byte, a third of the size of decimal JSON.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import torch
from torch import nn

from vae.config.schema import Config
from vae.data.split import Split
from vae.evaluate.estimators import latent_plane
from vae.evaluate.heldout import Posteriors
from vae.evaluate.pictures import dim_names, ranked_dims
from vae.files import atomic_write_text
from vae.model.distributions import GaussianMixture, Prior
from vae.model.vae import VAE, TwoLayerVAE

EXAMPLES_PER_CLASS = 2  # test images the page can start from
MAP_POINTS = 2000  # points on the clickable latent map
MAX_SLIDERS = 64  # the most informative dims get sliders; the rest keep the chosen image's values
MAX_CLASSES = 10  # the classes whose test images the page can start from
MAX_DECODER_WEIGHTS = 10_000_000  # 53 MB of base64 in report.html: larger decoders are not embedded


def floats(t: torch.Tensor) -> str:
    return base64.b64encode(t.detach().float().cpu().contiguous().numpy().astype("<f4").tobytes()).decode("ascii")


def layers(net: nn.Sequential) -> list[dict]:
    """An MLP's Linear layers in order (weight (out, in) row-major); its activation sits between them."""
    return [{"in": m.in_features, "out": m.out_features, "weight": floats(m.weight), "bias": floats(m.bias)}
            for m in net if isinstance(m, nn.Linear)]


def mixture(prior: Prior) -> dict | None:
    """A Gaussian-mixture prior's weights and components (K, L) for the page to sample from; None for N(0, I)."""
    if not isinstance(prior, GaussianMixture):
        return None
    return {"weights": prior.log_weights.exp().tolist(), "mu": prior.mu.tolist(), "logvar": prior.logvar.tolist()}


def explorer_data(model: VAE, split: Split, post: Posteriors, cfg: Config, dim_kl: list[float] | None,
                  dim_kl_z2: list[float] | None = None) -> dict:
    """The page's payload; for a conv decoder only the reason it has none. The sliders are the code's dims ranked
    by ranked_dims (z1's KL per dim `dim_kl`, z2's `dim_kl_z2`)."""
    if cfg.model.arch != "mlp":
        return {"absent": "the convolutional decoder (transposed convolutions and residual blocks) is not "
                          "ported to the page's JavaScript; the pictures below are drawn by torch"}
    weights = sum(p.numel() for p in model.decoder.parameters())
    if weights > MAX_DECODER_WEIGHTS:
        return {"absent": f"the decoder has {weights:,} weights, more than the {MAX_DECODER_WEIGHTS:,} a page "
                          f"carries; the pictures below are drawn by torch"}
    mu, labels, classes = post.decoded.cpu(), split.labels.cpu(), split.classes
    per_class = EXAMPLES_PER_CLASS if len(classes) > 1 else 2 * MAX_CLASSES  # unlabelled: the first images
    chosen = [int(i) for c in range(min(len(classes), MAX_CLASSES))
              for i in (labels == c).nonzero().flatten()[:per_class]]
    first_of = lambda c: next((n for n, i in enumerate(chosen) if labels[i] == c), 0)  # noqa: E731
    names = dim_names(model)
    origin, axes, axis_names = latent_plane(mu, names)
    shown = mu[:MAP_POINTS].double()
    points = (shown - origin) @ axes.T  # (M, 2)
    order, label = ranked_dims(model, post, dim_kl, dim_kl_z2)
    return {
        "shape": list(split.shape), "latent_dim": model.latent_dim, "code_dim": model.code_dim,
        "activation": cfg.model.activation,
        "likelihood": {"name": cfg.model.likelihood, "components": cfg.model.likelihood_components},
        "decoder": layers(model.decoder),
        # two stochastic layers: p(z1|z2) emits (mu, logvar) of z1, side by side, for sampling; logvar clamped to these
        "prior": layers(model.prior1) if isinstance(model, TwoLayerVAE) else None,
        "prior_logvar": list(TwoLayerVAE.LOGVAR_BOUNDS),
        # p(z) of the top layer when it is a Gaussian mixture (mog, or the VampPrior at its pseudo-inputs)
        "mixture": mixture(model.prior_distribution()),
        "latent2_dim": cfg.model.latent2_dim, "class_names": list(classes),
        # where the sliders and the interpolation start: a viz.digit, and the class five on from it (the next image
        # without classes)
        "start": first_of(cfg.viz.digit),
        "end": first_of((cfg.viz.digit + 5) % len(classes)) if len(classes) > 1 else min(1, len(chosen) - 1),
        "sliders": [{"dim": d, "name": names[d], "label": label[d], "low": min(-4.0, float(mu[:, d].min())),
                     "high": max(4.0, float(mu[:, d].max()))} for d in order[:MAX_SLIDERS]],
        "examples": [{"label": int(labels[i]), "index": i, "mu": mu[i].tolist(),
                      "pixels": base64.b64encode(split.images[i].cpu().numpy().tobytes()).decode("ascii")}
                     for i in chosen],
        "map": {"origin": origin.tolist(), "axes": axes.tolist(), "points": floats(points),  # (M, 2)
                "labels": labels[:MAP_POINTS].tolist(), "names": list(axis_names)},
    }


def save_explorer(model: VAE, split: Split, post: Posteriors, cfg: Config, dim_kl: list[float] | None,
                  out: Path, dim_kl_z2: list[float] | None = None) -> None:
    atomic_write_text(out / "explorer.json", json.dumps(explorer_data(model, split, post, cfg, dim_kl, dim_kl_z2)))
