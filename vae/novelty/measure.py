"""New data against reference data, through a trained model: every chosen score of every image on both sides, how
well each score separates the sides, and the dataset-level answer (the aggregate posteriors' KL, the test)."""
from __future__ import annotations

from typing import NamedTuple

import torch

from vae.config.schema import Config
from vae.data.split import Split
from vae.evaluate.analyze import BITS_PER_NAT, timed
from vae.evaluate.heldout import Posteriors, encode_split
from vae.model.vae import VAE
from vae.novelty.datasets import aggregate_kl, mmd_test
from vae.novelty.scores import Reference, score_split
from vae.novelty.separation import separation

# What each score is, for metrics.json and the page (vae/novelty/scores.py says how each is computed)
MEANINGS = {
    "nll": "-log p(x), the IWAE-k bound: the model's likelihood, which deep generative models are known to rate "
           "higher on some data they never saw (simple images: few strokes, flat backgrounds)",
    "rate": "KL(q(z|x) || p(z)), the training objective's own KL: the nats the image's code carries beyond the prior",
    "complexity": "nll - L(x) ln 2, L(x) the code length in bits of the image as the likelihood sees it under a "
                  "lossless compressor (Serrà et al. 2020): the likelihood corrected for how simple the image is",
    "typicality": "|nll - the reference images' mean nll| (Nalisnick et al. 2019's typicality test of one image): "
                  "an image can be too likely to be typical of the data, as well as too unlikely",
    "regret": "-ELBO(x) under the encoder's q(z|x) minus -ELBO(x) under a q(z|x) refit to the image alone (Xiao et "
              "al. 2020's likelihood regret, refitting the posterior): how badly the encoder fits this image",
    "kl_to_reference": "KL(q(z|x) || q_ref(z)), q_ref the reference images' aggregate posterior: how far the image's "
                       "code lies from where the reference data's codes lie",
}


class Measured(NamedTuple):
    """Both sides measured: their encodings, every image's scores, and the summaries."""

    ref_post: Posteriors
    new_post: Posteriors
    ref_scores: dict[str, torch.Tensor]  # score -> (M,) float64 nats on the CPU
    new_scores: dict[str, torch.Tensor]  # score -> (N,)
    scores: dict[str, dict]  # score -> per_score's summary
    dataset: dict  # compare_datasets'
    seconds: dict[str, float]


def compare_datasets(model: VAE, reference: Posteriors, new: Posteriors, cfg: Config) -> dict:
    """The dataset-level answer: the KL between the aggregate posteriors (where the posterior is Gaussian), and
    the two-sample test on the codes."""
    seed, score = cfg.eval.seed, cfg.score
    kl = None
    if model.flow is None and len(new.mu) >= 2:
        kl = aggregate_kl(new.mu, new.logvar, reference.mu, reference.logvar, seed, score.bootstrap)
    test = mmd_test(new.mu, reference.mu, score.permutations, seed) if len(new.mu) >= 2 else None
    if test:
        test.update(alpha=score.alpha, differ=test["p_value"] < score.alpha)
    why = ("one new image: a distribution needs more" if len(new.mu) < 2 else
           "the flow posterior: its density at another image's z needs the flow inverted" if kl is None else None)
    return {"aggregate_kl": kl, "test": test, **({"not_defined": why} if why else {})}


def per_score(name: str, ref: torch.Tensor, new: torch.Tensor, dims: int) -> dict:
    """A score's meaning, its means on both sides in nats and bits/dim, and how well it separates them."""
    means = {side: values.mean().item() for side, values in (("reference", ref), ("new", new))}
    return {"meaning": MEANINGS[name], **{f"{side}_mean": v for side, v in means.items()},
            **{f"{side}_bits_per_dim": v * BITS_PER_NAT / dims for side, v in means.items()},
            **separation(ref.numpy(), new.numpy())}


def measure(model: VAE, reference: Split, new: Split, cfg: Config, scores: tuple[str, ...]) -> Measured:
    """Everything measured of `new` against `reference` (both as the model sees images), the noise seeded by
    eval.seed."""
    seed, seconds = cfg.eval.seed, {}
    with timed(seconds, "encode"):
        ref_post, new_post = encode_split(model, reference, seed), encode_split(model, new, seed)
    with timed(seconds, "reference_scores"):
        with_nll = scores if "nll" in scores else ("nll", *scores)  # its mean: where typicality is measured from
        ref_scores = score_split(model, reference, ref_post, Reference(ref_post), cfg, with_nll, is_reference=True)
        nll_mean = ref_scores["nll"].mean().item()
        ref_scores = {s: ref_scores[s] for s in scores}
    with timed(seconds, "new_scores"):
        new_scores = score_split(model, new, new_post, Reference(ref_post, nll_mean), cfg, scores)
    with timed(seconds, "dataset"):
        dataset = compare_datasets(model, ref_post, new_post, cfg)
    summaries = {s: per_score(s, ref_scores[s], new_scores[s], new.dims) for s in scores}
    return Measured(ref_post, new_post, ref_scores, new_scores, summaries, dataset, seconds)
