"""`evaluate.py --against`: new data scored against a run's reference split, image by image and as a whole, written
to <run>/scores/<name>/ (scores.csv, scores.npz, metrics.json, scores.html)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from vae.config.schema import Config
from vae.data.split import Split
from vae.device import available_bytes, gib
from vae.errors import UserError
from vae.evaluate.analyze import BITS_PER_NAT, fixed_split, load_evaluated, targets, timed
from vae.evaluate.heldout import Posteriors, encode_split
from vae.files import atomic_write_text, refuse_links
from vae.model.vae import VAE
from vae.novelty.datasets import TEST_IMAGES, aggregate_kl, mmd_test
from vae.novelty.output import save_scores
from vae.novelty.scores import chosen_scores, not_defined, score_split
from vae.novelty.separation import separation
from vae.novelty.sources import new_data, source_name
from vae.run.checkpoint import checkpoint_id, run_dir_of

# What each score is, for metrics.json and the page (vae/novelty/scores.py says how each is computed)
MEANINGS = {
    "nll": "-log p(x), the IWAE-k bound: the model's likelihood, which deep generative models are known to rate "
           "higher on some data they never saw (simple images: few strokes, flat backgrounds)",
    "rate": "KL(q(z|x) || p(z)), the training objective's own KL: the nats the image's code carries beyond the prior",
    "complexity": "nll - L(x) ln 2, L(x) the image's code length in bits under a lossless compressor (Serrà et al. "
                  "2020): the likelihood corrected for how simple the image is",
    "regret": "-ELBO(x) under the encoder's q(z|x) minus -ELBO(x) under a q(z|x) refit to the image alone (Xiao et "
              "al. 2020's likelihood regret, refitting the posterior): how badly the encoder fits this image",
    "kl_to_reference": "KL(q(z|x) || q_ref(z)), q_ref the reference images' aggregate posterior: how far the image's "
                       "code lies from where the reference data's codes lie",
}


def check_memory(new: int, reference: int, dims: int, permutations: int, device: torch.device) -> None:
    """Refuse scoring whose images and the test's kernel and permutations would not fit in the free memory."""
    pooled = min(new, TEST_IMAGES) + min(reference, TEST_IMAGES)
    parts = {"the images": 5 * (new + reference) * dims,  # uint8, and a float batch of them
             "the test's kernel and permutations": 8 * pooled * (3 * pooled + 2 * permutations)}
    needed = sum(parts.values())
    if needed > available_bytes(device):
        detail = ", ".join(f"{name} {gib(n)}" for name, n in parts.items())
        raise UserError(f"scoring needs about {gib(needed)} of memory on {device} ({detail}) but only "
                        f"{gib(available_bytes(device))} is available: score fewer images at once, or lower "
                        f"score.permutations")


def out_dir(path: Path, name: str, out: str | Path | None) -> Path:
    """Where the scores go: `out`, or <run>/scores/<name>; never through a symbolic link."""
    run_dir = run_dir_of(path) or path.resolve().parent
    target = Path(out).expanduser() if out else run_dir / "scores" / name
    refuse_links(target, *([] if out else [target.parent]))
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} is a file, not a folder to write the scores into: pass --out DIR")
    return target


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


def summary(m: dict) -> str:
    """The answer in one sentence (two when a score separates the images)."""
    new, ref, d = m["new"], m["reference"], m["dataset"]
    said = f"The {new['images']} new images ({new['name']}) "
    if d["aggregate_kl"]:
        kl = d["aggregate_kl"]
        said += (f"lie {kl['kl']:.2f} nats (95% interval {kl['low']:.2f} to {kl['high']:.2f}) from the "
                 f"{ref['images']} reference images ({ref['split']}) in KL(q_new(z) ‖ q_ref(z))")
    else:
        said += f"were compared with the {ref['images']} reference images ({ref['split']})"
    if d["test"]:
        t = d["test"]
        verdict = "differ from them" if t["differ"] else "do not differ detectably from them"
        said += (f"; an MMD test of their codes says they {verdict} at level α = {t['alpha']:g} "
                 f"(p = {t['p_value']:.3g})")
    best = max(m["scores"], key=lambda s: m["scores"][s]["auroc"])
    return said + f". The score that best tells them apart: {best} (AUROC {m['scores'][best]['auroc']:.3f})."


def score_against(checkpoint: str | Path, against: str, transform: str | None = None, overrides: list[str] = (),
                  out: str | Path | None = None) -> dict:
    """Score the data `against` names (transformed by `transform`) against the run's score.reference split; write
    the scores and the page; return metrics.json's contents."""
    path, data, state, cfg, device, splits, model = load_evaluated(checkpoint, overrides)
    if against == cfg.score.reference and not transform:
        raise UserError(f"--against {against} is the reference itself (score.reference={cfg.score.reference}): "
                        f"set score.reference to another split, or pass --transform")
    reference = fixed_split(splits, cfg, cfg.score.reference)
    if reference is None:  # the config's own checks make this unreachable; kept as one clear line
        raise UserError(f"score.reference={cfg.score.reference}: the run has no such split")
    new = new_data(cfg, against, transform, splits.shape, device)
    scores = chosen_scores(model, cfg.score)
    check_memory(len(new), len(reference), new.dims, cfg.score.permutations, device)
    name = source_name(against, transform)
    target = out_dir(path, name, out)
    target.mkdir(parents=True, exist_ok=True)

    t0, seconds, seed = time.perf_counter(), {}, cfg.eval.seed
    with timed(seconds, "encode"):
        ref_post, new_post = encode_split(model, reference, seed), encode_split(model, new, seed)
    with timed(seconds, "reference_scores"):
        ref_scores = score_split(model, reference, ref_post, ref_post, cfg.score, scores, seed, is_reference=True)
    with timed(seconds, "new_scores"):
        new_scores = score_split(model, new, new_post, ref_post, cfg.score, scores, seed)
    with timed(seconds, "dataset"):
        dataset = compare_datasets(model, ref_post, new_post, cfg)
    undefined = {k: v for k, v in not_defined(model).items() if k not in scores}
    metrics = {
        "checkpoint": str(path), "checkpoint_sha256": checkpoint_id(data), "epoch": state["epoch"],
        "device": str(device), "unit": "nats per image unless named otherwise; every score: higher = more unusual",
        "reference": {"split": cfg.score.reference, "images": len(reference), "classes": classes_of(reference)},
        "new": {"against": against, "transform": transform, "name": name, "images": len(new)},
        "protocol": {"targets": targets(cfg), "iwae_samples": cfg.score.iwae_samples, "samples": cfg.score.samples,
                     "compressor": cfg.score.compressor, "regret_steps": cfg.score.regret_steps,
                     "regret_lr": cfg.score.regret_lr, "permutations": cfg.score.permutations,
                     "bootstrap": cfg.score.bootstrap, "seed": seed},
        "scores": {s: per_score(s, ref_scores[s], new_scores[s], new.dims) for s in scores},
        "not_defined": undefined, "dataset": dataset,
    }
    metrics["summary"] = summary(metrics)
    with timed(seconds, "writing"):
        save_scores(target, reference, new, ref_post, new_post, ref_scores, new_scores, metrics, model)
    metrics["seconds"] = {**seconds, "total": round(time.perf_counter() - t0, 3)}
    metrics["out"] = str(target)
    atomic_write_text(target / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return metrics


def classes_of(split: Split) -> list[str]:
    """The names of the classes present in `split`."""
    return [split.classes[c] for c in sorted(set(split.labels.tolist())) if c < len(split.classes)]
