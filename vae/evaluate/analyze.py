"""evaluate.py's work: a checkpoint's ELBO split, IWAE NLL, rate split and pictures, in <run>/eval/."""
from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch

from vae.config.load import load_config, to_dict
from vae.config.schema import Config, with_classes
from vae.data.load import TRAIN_DRAW, Splits, load_data
from vae.data.split import Split
from vae.device import resolve_device
from vae.evaluate.estimators import IWAE_EXAMPLES, active_dims, iwae_nll, rate_split
from vae.evaluate.explorer import save_explorer
from vae.evaluate.heldout import Posteriors, encode_split
from vae.evaluate.latents import save_latents
from vae.evaluate.pictures import save_evaluation_pictures
from vae.evaluate.report import write_report
from vae.evaluate.tensorboard import log_evaluation, summary_writer_class
from vae.files import atomic_write_text
from vae.model.vae import VAE, TwoLayerVAE, build_model
from vae.run import rundir
from vae.run.checkpoint import (
    check_same_data,
    checkpoint_id,
    evaluated_weights,
    load_checkpoint,
    load_state,
    resolve_checkpoint,
    run_dir_of,
)
from vae.run.resume import check_same_run

BITS_PER_NAT = 1 / math.log(2)


def bits_per_dim(nats: float, dims: int) -> float:
    """Nats per image as bits per number of it (C * H * W of them)."""
    return nats * BITS_PER_NAT / dims


TARGETS = {
    "none": "pixel intensities in [0, 1] as Bernoulli targets (not binarized, so bits/dim is a "
            "cross-entropy, not a code length)",
    "dynamic": "binary pixels: the split binarized once, seeded by data.seed (training resampled them)",
    "static": "binary pixels: the split binarized once, seeded by data.seed",
    "continuous_bernoulli": "8-bit pixels under a continuous Bernoulli, its density (as trained) integrated over each "
                            "level's bin of width 1/255: the NLL is a probability of the 256-level images, so bits/dim "
                            "is a code length beside the logistic's (training's nats are the density's)",
    "logistic": "8-bit pixels under a discretized logistic: the NLL is a probability of the 256-level images, so "
                "bits/dim is a code length (as flows report it)",
}


def targets(cfg: Config) -> str:
    """What the evaluated numbers are numbers of: the data as the likelihood sees it."""
    return TARGETS[cfg.data.binarize if cfg.model.likelihood == "bernoulli" else cfg.model.likelihood]


@torch.no_grad()
def top_layer_active_units(model: TwoLayerVAE, split: Split, seed: int, samples: int = 16) -> int:
    """z2's active units, from the mean and variance of z2 under q(z2|x) of every example (bottom-up, over
    `samples` draws of z1 each), under the rule for the model's prior (`active_dims`)."""
    gen = torch.Generator(device=split.images.device).manual_seed(seed)
    moments = []
    for index in torch.arange(len(split), device=split.images.device).split(IWAE_EXAMPLES):
        eps = torch.randn((samples, len(index), model.latent_dim), generator=gen, device=split.images.device)
        moments.append(model.top_moments(split.pixels(index), eps))
    mu, logvar = (torch.cat(m) for m in zip(*moments))
    return int(active_dims(model, mu, logvar).sum())


@contextmanager
def timed(seconds: dict, name: str):
    t0 = time.perf_counter()
    yield
    seconds[name] = round(time.perf_counter() - t0, 3)


def rate_protocol(model: VAE, cfg: Config) -> str:
    """How the ELBO's rate was measured, for metrics.json and the report."""
    if cfg.model.latent2_dim:
        top = "analytic KL of z2" if model.prior_distribution().extra_noise == 0 else "a one-sample KL of z2"
        bottom = ("the analytic KL of z1 given that sample of z2" if cfg.model.inference == "top_down" else
                  "a one-sample estimate for z1")
        return f"one z sample per example for distortion; {top} (p(z2): {cfg.model.prior}), {bottom}"
    if model.analytic_kl:
        return "one z sample per example for distortion; analytic KL"
    return (f"one z sample per example for distortion and rate: log q(z|x) - log p(z) at that sample (the KL of a "
            f"{cfg.model.posterior} posterior against the {cfg.model.prior} prior has no closed form)")


def undefined_rate_split(model: VAE, cfg: Config) -> str | None:
    """Why the rate split is not measured for this model, or None when it is."""
    if cfg.model.latent2_dim:
        return "two stochastic layers: z1's prior p(z1|z2) is not a fixed distribution"
    if model.flow is not None:
        return ("the flow posterior: the aggregate posterior needs log q(z|x') of every image x' at every z, "
                "which an inverse autoregressive flow gives only by inverting it dimension by dimension")
    return None


def active_units_note(model: VAE) -> str | None:
    """How active units were counted where Burda et al.'s Var_x(E_q[z_d]) > 0.01 does not apply as it is."""
    notes = ["against a learned prior, which leaves the scale of z free, a unit is active when Var_x(E_q[z_d]) "
             "is over 1% of z_d's variance under the aggregate posterior"] if model.learned_prior else []
    if model.flow is not None:
        notes.append("under the flow, measured at each image's code (the flow's image of its base mean), not at "
                     "E_q[z|x]")
    return "; ".join(notes) or None


def layer_rates(post: Posteriors, cfg: Config, rate: float) -> tuple[list | None, list | None, list[float]]:
    """The mean rate of each dimension of z1 and of z2 (None where the rate is not a sum over dimensions), and of
    each stochastic layer, z1 first."""
    if post.kl_dims is not None:
        layer_nats = post.kl_dims.double().mean(0).split([cfg.model.latent_dim, cfg.model.latent2_dim])
        return (layer_nats[0].tolist(), layer_nats[1].tolist(),
                [nats.sum().item() for nats in layer_nats if len(nats)])
    top = [post.kl_top.double().mean().item()] if post.kl_top is not None else []
    return None, None, [rate - sum(top), *top]


def analyze(model: VAE, split: Split, cfg: Config, out: Path, epoch: int) -> dict:
    """All the numbers (returned, JSON-ready) and pictures (written to `out`) for one model, trained `epoch`s;
    with logging.tensorboard, the numbers and codes also in the run's TensorBoard log."""
    k, seed, seconds = cfg.eval.iwae_samples, cfg.eval.seed, {}
    with timed(seconds, "encode"):
        post = encode_split(model, split, seed)
    with timed(seconds, "iwae"):
        nll, neg_elbo_k = iwae_nll(model, split, k, seed)
    undefined = undefined_rate_split(model, cfg)
    with timed(seconds, "aggregate_posterior"):
        gen = torch.Generator(device=post.mu.device).manual_seed(seed)
        rates = None if undefined else rate_split(post.mu, post.logvar, model.prior_distribution(), generator=gen,
                                                  progress=True)

    distortion, rate = post.recon.double().mean().item(), post.kl.double().mean().item()
    variance = post.mu.double().var(0)  # Cov_x(E_q[z_d])
    active = active_dims(model, post.mu, post.logvar).tolist()
    dim_kl, dim_kl_z2, rate_per_layer = layer_rates(post, cfg, rate)
    nll_mean, neg_elbo_k_mean = nll.double().mean().item(), neg_elbo_k.double().mean().item()
    metrics = {
        "split": cfg.eval.split, "examples": len(split), "image_shape": list(split.shape),
        "classes": list(split.classes), "latent_dim": cfg.model.latent_dim,
        "unit": "nats per example unless named otherwise",
        "protocol": {"targets": targets(cfg), "binarize": cfg.data.binarize,
                     "data_seed": cfg.data.seed, "val_size": cfg.data.val_size, "iwae_samples": k, "seed": seed,
                     "elbo": rate_protocol(model, cfg)},
        "prior": cfg.model.prior, "posterior": cfg.model.posterior, "likelihood": cfg.model.likelihood,
        "kl": "analytic" if model.analytic_kl else "monte_carlo",
        "negative_elbo": distortion + rate, "distortion": distortion, "rate": rate,
        "negative_elbo_bits_per_dim": bits_per_dim(distortion + rate, split.dims),
        "nll_iwae": nll_mean, "nll_iwae_bits_per_dim": bits_per_dim(nll_mean, split.dims),
        "negative_elbo_k_samples": neg_elbo_k_mean,
        "inference_gap": neg_elbo_k_mean - nll_mean,
        "active_units": sum(active),
        "kl_per_dim": dim_kl, "posterior_mean_variance_per_dim": variance.tolist(),
        "rate_split": rates and {**rates, "sum": rates["mutual_information"] + rates["marginal_kl"],
                                 "average_kl": rate},
        "rate_per_layer": rate_per_layer,
        **({"kl_per_dim_z2": dim_kl_z2,
            "active_units_z2": top_layer_active_units(model, split, seed)} if cfg.model.latent2_dim else {}),
        "not_defined": {name: why for name, why in (
            ("kl_per_dim", None if dim_kl is not None else "the KL of this prior and posterior is not a sum over "
             "dimensions (it is sampled as a whole); dimensions are ranked by the variance of their posterior "
             "means instead"),
            ("rate_split", undefined),
            ("active_units", active_units_note(model))) if why},
    }
    with timed(seconds, "pictures"):
        save_evaluation_pictures(model, split, post, cfg, dim_kl, active,
                                 {"negative ELBO": post.recon + post.kl, f"IWAE-{k} NLL": nll}, out, dim_kl_z2)
    save_latents(post, split.labels, nll, cfg.eval.split, out)
    save_explorer(model, split, post, cfg, dim_kl, out, dim_kl_z2)
    if cfg.logging.tensorboard:
        log_evaluation(out.parent / "tensorboard", metrics, post.mu, split, epoch)
    return {**metrics, "seconds": seconds}


class Loaded(NamedTuple):
    """A checkpoint ready to measure: its file and bytes, its state, the config with the overrides, the data and the
    model in eval mode on the device."""

    path: Path
    data: bytes
    state: dict
    cfg: Config
    device: torch.device
    splits: Splits
    model: VAE


def load_evaluated(path: str | Path, overrides: list[str] = ()) -> Loaded:
    """The checkpoint at `path` (a run directory means its last.pt) with `overrides` of the keys that may change,
    its data read as its config says."""
    path = resolve_checkpoint(path)
    data = path.read_bytes()  # once: what is measured is what its id names, even while a run writes on
    state, stored = load_checkpoint(path, data)
    cfg = load_config(None, overrides, base=to_dict(stored))
    check_same_run(stored, cfg)
    device = resolve_device(cfg.train.device)
    splits = load_data(cfg.data, device)
    check_same_data(state, splits, path)
    cfg = with_classes(cfg, splits.classes)
    model = build_model(cfg.model, splits.shape).to(device)
    load_state(model, evaluated_weights(state), path)
    return Loaded(path, data, state, cfg, device, splits, model.eval())


def fixed_split(splits: Splits, cfg: Config, name: str) -> Split:
    """The split `name` as evaluations measure it: under dynamic binarization, the training images drawn once, as
    the other splits are."""
    split = getattr(splits, name)
    return split.binarized(cfg.data.seed + TRAIN_DRAW) if name == "train" and cfg.data.binarize == "dynamic" else split


def evaluate_checkpoint(path: str | Path, overrides: list[str] = ()) -> dict:
    """Everything evaluate.py reports for one checkpoint; writes <run>/eval/ and <run>/report.html."""
    path, data, state, cfg, device, splits, model = load_evaluated(path, overrides)
    if cfg.logging.tensorboard:
        summary_writer_class()  # refused now, not after the measuring, where the tensorboard package is missing

    run_dir = run_dir_of(path) or path.resolve().parent
    rows = rundir.read_metrics(run_dir)  # for the report; read now so a bad file fails before the work
    out = run_dir / "eval"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    split = fixed_split(splits, cfg, cfg.eval.split)
    metrics = {"checkpoint": str(path), "checkpoint_sha256": checkpoint_id(data), "config": to_dict(cfg),
               "epoch": state["epoch"],
               "steps_into_next_epoch": state["progress"]["step"] if state["progress"] else 0,
               "device": str(device), **analyze(model, split, cfg, out, state["epoch"])}
    metrics["seconds"] = {**metrics["seconds"], "total": round(time.perf_counter() - t0, 3)}
    metrics["report"] = str(run_dir / "report.html")
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_report(run_dir, cfg, metrics, rows)
    return metrics
