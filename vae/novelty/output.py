"""What `evaluate.py --against` writes beside metrics.json: the scores of every image (scores.npz, scores.csv), the
figures, and scores.html."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from vae.data.split import Split
from vae.evaluate.heldout import Posteriors
from vae.evaluate.plots import plt, save_figure, save_labeled_rows
from vae.files import atomic_write, atomic_write_text
from vae.novelty.measure import Measured
from vae.novelty.page import write_page
from vae.novelty.separation import roc

SHOWN = 16  # images in each row of the most and least typical


def save_arrays(out: Path, reference: Split, new: Split, ref_post: Posteriors, new_post: Posteriors,
                ref_scores: dict[str, torch.Tensor], new_scores: dict[str, torch.Tensor]) -> None:
    """scores.npz: per image of both sides, `side` (0 reference, 1 new), `index` within its side, `label`, `mu`,
    `logvar` and each score in nats (float64); scores.csv: side, index, label and the scores."""
    arrays = {"side": np.repeat(np.array([0, 1], dtype=np.int8), [len(reference), len(new)]),
              "index": np.concatenate([np.arange(len(reference)), np.arange(len(new))]).astype(np.int64),
              "label": torch.cat([reference.labels, new.labels]).cpu().numpy().astype(np.int64),
              "mu": torch.cat([ref_post.mu, new_post.mu]).float().cpu().numpy(),
              "logvar": torch.cat([ref_post.logvar, new_post.logvar]).float().cpu().numpy(),
              **{name: torch.cat([ref_scores[name], new_scores[name]]).numpy() for name in ref_scores}}
    atomic_write(out / "scores.npz", lambda f: np.savez(f, **arrays))
    text = io.StringIO()
    names = list(ref_scores)
    table = np.column_stack([arrays["side"], arrays["index"], arrays["label"], *(arrays[n] for n in names)])
    np.savetxt(text, table, fmt=["%d", "%d", "%d"] + ["%.6f"] * len(names), delimiter=",",
               header=",".join(["side", "index", "label", *names]), comments="")
    atomic_write_text(out / "scores.csv", text.getvalue())


def plot_histograms(ref_scores: dict, new_scores: dict, path: Path) -> None:
    """Each score's distribution on the reference and the new images."""
    fig, axes = plt.subplots(1, len(ref_scores), figsize=(3.6 * len(ref_scores), 3.2), squeeze=False)
    for ax, name in zip(axes[0], ref_scores):
        ref, new = ref_scores[name].numpy(), new_scores[name].numpy()
        low, high = np.percentile(np.concatenate([ref, new]), [0.5, 99.5])
        bins = np.linspace(low, high if high > low else low + 1, 50)
        ax.hist(np.clip(ref, bins[0], bins[-1]), bins, alpha=0.6, density=True, label="reference")
        ax.hist(np.clip(new, bins[0], bins[-1]), bins, alpha=0.6, density=True, label="new")
        ax.set(title=name, xlabel="nats (higher = more unusual)")
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_roc(ref_scores: dict, new_scores: dict, aurocs: dict, path: Path) -> None:
    """Every score's ROC curve: new images flagged against reference images flagged."""
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for name in ref_scores:
        fpr, tpr = roc(ref_scores[name].numpy(), new_scores[name].numpy())
        ax.plot(fpr, tpr, label=f"{name} ({aurocs[name]:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="0.6")
    ax.set(xlabel="reference images flagged (false positive rate)", ylabel="new images flagged (true positive rate)",
           title="ROC (AUROC)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def save_typical(new: Split, scores: torch.Tensor, name: str, shape: tuple[int, int, int], path: Path) -> None:
    """The new images that `scores` rates most and least unusual, a row each."""
    order = scores.argsort(descending=True)
    n = min(SHOWN, len(order))
    rows = torch.stack([order[:n], order[-n:].flip(0)])  # (2, n)
    images = new.images[rows.flatten().to(new.images.device)].float().div(255).view(2, n, *shape)
    save_labeled_rows(images, ["most unusual", "most typical"], path, f"new images by {name}")


def save_scores(out: Path, reference: Split, new: Split, m: Measured, metrics: dict,
                shape: tuple[int, int, int]) -> None:
    """Everything but metrics.json."""
    save_arrays(out, reference, new, m.ref_post, m.new_post, m.ref_scores, m.new_scores)
    plot_histograms(m.ref_scores, m.new_scores, out / "histograms.png")
    plot_roc(m.ref_scores, m.new_scores, {s: v["auroc"] for s, v in m.scores.items()}, out / "roc.png")
    best = max(m.scores, key=lambda s: m.scores[s]["auroc"])
    save_typical(new, m.new_scores[best], best, shape, out / "typical.png")
    write_page(out, metrics, best)
