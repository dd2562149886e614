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
from vae.evaluate.analyze import fixed_split, load_evaluated, targets, timed
from vae.evaluate.estimators import MIXTURE_CHUNK
from vae.files import atomic_write_text, refuse_links
from vae.novelty.datasets import PERMUTED, TEST_IMAGES
from vae.novelty.measure import measure
from vae.novelty.output import save_scores
from vae.novelty.scores import chosen_scores, not_defined
from vae.novelty.sources import new_data, source_name
from vae.run.checkpoint import checkpoint_id, run_dir_of


def check_memory(new: int, reference: int, dims: int, cfg: Config, device: torch.device) -> None:
    """Refuse scoring whose images, KL estimates and test would not fit in the free memory."""
    pooled = min(new, TEST_IMAGES) + min(reference, TEST_IMAGES)
    parts = {"the images": 5 * (new + reference) * dims,  # uint8, and a float batch of them
             "the KLs' blocks of log-densities": 8 * 2 * MIXTURE_CHUNK * reference,  # log-densities, exponentials
             "the test's kernel and permutations": 8 * pooled * (3 * pooled + 3 * PERMUTED)}
    needed = sum(parts.values())
    if needed > available_bytes(device):
        detail = ", ".join(f"{name} {gib(n)}" for name, n in parts.items())
        raise UserError(f"scoring needs about {gib(needed)} of memory on {device} ({detail}) but only "
                        f"{gib(available_bytes(device))} is available: score fewer images at once")


def out_dir(path: Path, name: str, out: str | Path | None) -> Path:
    """Where the scores go: `out`, or <run>/scores/<name>; never through a symbolic link."""
    run_dir = run_dir_of(path) or path.resolve().parent
    target = Path(out).expanduser() if out else run_dir / "scores" / name
    refuse_links(target, *([] if out else [target.parent]))
    if target.exists() and not target.is_dir():
        raise UserError(f"{target} is a file, not a folder to write the scores into: pass --out DIR")
    return target


def summary(m: dict) -> str:
    """The answer in two sentences: the data as a whole, then the score that best tells the images apart."""
    new, ref, d = m["new"], m["reference"], m["dataset"]
    said = f"The {new['images']} new images ({new['name']}) "
    if d["aggregate_kl"]:
        kl = d["aggregate_kl"]
        said += (f"are KL(q_new(z) ‖ q_ref(z)) = {kl['kl']:.2f} nats (95% interval {kl['low']:.2f} to "
                 f"{kl['high']:.2f}) from the {ref['images']} reference images ({ref['split']})")
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
    reference = fixed_split(splits, cfg, cfg.score.reference)  # the config's checks make sure the run has it
    if len(reference) < 2:
        raise UserError(f"score.reference={cfg.score.reference} holds {len(reference)} image: scoring needs at least "
                        f"2 reference images (another split, or a larger data.test_fraction)")
    new = new_data(cfg, against, transform, splits.shape, device)
    scores = chosen_scores(model, cfg)
    check_memory(len(new), len(reference), new.dims, cfg, device)
    name = source_name(against, transform)
    target = out_dir(path, name, out)
    target.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    measured = measure(model, reference, new, cfg, scores)
    undefined = {k: v for k, v in not_defined(model, cfg.data.binarize != "none").items() if k not in scores}
    metrics = {
        "checkpoint": str(path), "checkpoint_sha256": checkpoint_id(data), "epoch": state["epoch"],
        "device": str(device), "unit": "nats per image unless named otherwise; every score: higher = more unusual",
        "reference": {"split": cfg.score.reference, "images": len(reference), "classes": classes_of(reference)},
        "new": {"against": against, "transform": transform, "name": name, "images": len(new)},
        "protocol": {"targets": targets(cfg), "iwae_samples": cfg.score.iwae_samples, "samples": cfg.score.samples,
                     "compressor": cfg.score.compressor, "regret_steps": cfg.score.regret_steps,
                     "regret_lr": cfg.score.regret_lr, "permutations": cfg.score.permutations,
                     "bootstrap": cfg.score.bootstrap, "seed": cfg.eval.seed},
        "scores": measured.scores, "not_defined": undefined, "dataset": measured.dataset,
    }
    metrics["summary"] = summary(metrics)
    seconds = measured.seconds
    with timed(seconds, "writing"):
        save_scores(target, reference, new, measured, metrics, model.shape)
    metrics["seconds"] = {**seconds, "total": round(time.perf_counter() - t0, 3)}
    metrics["out"] = str(target)
    atomic_write_text(target / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    return metrics


def classes_of(split: Split) -> list[str]:
    """The names of the classes present in `split`."""
    return [split.classes[c] for c in sorted(set(split.labels.tolist())) if c < len(split.classes)]
