"""scores.html: one self-contained page (the report's page code) answering "how different is this data?"."""
from __future__ import annotations

import html
from pathlib import Path

from vae.evaluate.page import figure_rows, page, table
from vae.files import atomic_write_text


def score_table(metrics: dict) -> str:
    """Each score: its means on both sides, how well it separates them, what it means."""
    rows = [[name, m["meaning"], f"{m['reference_mean']:.3f} ({m['reference_bits_per_dim']:.4f})",
             f"{m['new_mean']:.3f} ({m['new_bits_per_dim']:.4f})", f"{m['auroc']:.3f}", f"{m['aupr']:.3f}",
             f"{m['fpr_at_95_tpr']:.3f}"] for name, m in metrics["scores"].items()]
    best = max(range(len(rows)), key=lambda i: float(rows[i][4]))
    return table(["score", "what it is", "reference mean, nats (bits/dim)", "new mean, nats (bits/dim)", "AUROC",
                  "AUPR", "FPR at 95% TPR"], rows, marked=best, numbers_from=2)


def dataset_section(metrics: dict) -> str:
    d = metrics["dataset"]
    lines = []
    if d["aggregate_kl"]:
        kl = d["aggregate_kl"]
        lines.append(f"KL(q_new(z) ‖ q_ref(z)) = {kl['kl']:.3f} nats, 95% bootstrap interval {kl['low']:.3f} to "
                     f"{kl['high']:.3f}: the aggregate posteriors (each a mixture of its images' q(z|x)), one z per "
                     f"new image, each image's own component left out of its own side's mixture.")
    if d["test"]:
        t = d["test"]
        lines.append(f"MMD² = {t['statistic']:.4g} between the posterior means (Gaussian kernel, bandwidth "
                     f"{t['bandwidth']:.3g}; {t['new_images']} new and {t['reference_images']} reference images), "
                     f"p = {t['p_value']:.4g} by {metrics['protocol']['permutations']} permutations: "
                     f"{'different' if t['differ'] else 'not detectably different'} at α = {t['alpha']:g}.")
    if "not_defined" in d:
        lines.append(f"Not measured: {d['not_defined']}.")
    return "".join(f"<p>{html.escape(line)}</p>" for line in lines)


def write_page(out: Path, metrics: dict, best: str) -> None:
    new, ref = metrics["new"], metrics["reference"]
    undefined = "".join(f"<p>{html.escape(name)}: not defined for this model ({html.escape(why)}).</p>"
                        for name, why in metrics["not_defined"].items())
    body = "\n".join([
        f"<p><b>{html.escape(metrics['summary'])}</b></p>",
        f"<p>Reference: {ref['images']} images of the run's {html.escape(ref['split'])} split "
        f"({html.escape(', '.join(ref['classes']))}); new: {new['images']} images of "
        f"{html.escape(new['name'])}. Checkpoint {html.escape(metrics['checkpoint'])} (epoch {metrics['epoch']}); "
        f"{html.escape(metrics['protocol']['targets'])}.</p>",
        "<h2>The data as a whole</h2>", dataset_section(metrics),
        "<h2>Image by image</h2>", score_table(metrics), undefined,
        figure_rows([[(out / "histograms.png", "Each score on the reference and the new images")],
                     [(out / "roc.png", "ROC curves: how many new images each score flags against reference ones"),
                      (out / "typical.png", f"The new images {best} rates most unusual and most typical")]]),
        "<p>Every score is in nats per image, higher = more unusual; AUROC 0.5 is chance, below 0.5 the score rates "
        "the new images as more usual than the reference. Per-image numbers: scores.csv and scores.npz beside "
        "this page.</p>",
    ])
    atomic_write_text(out / "scores.html", page(f"How different are the new images ({new['name']})?", body))
