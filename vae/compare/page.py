"""comparison.html: the table, the rate-distortion plane, the rate split, NLL against the swept key, pictures."""
from __future__ import annotations

import html
import json
from pathlib import Path

import optuna

from vae.compare.table import COLUMNS, cell, chosen, label
from vae.evaluate.plots import plot_rate_distortion, plot_rate_split, plot_swept, save_figure
from vae.evaluate.report import _image
from vae.files import atomic_write_text
from vae.sweep.spec import load
from vae.sweep.study import experimental, open_study


def write_html(out: Path, result: dict, runs: list[Path]) -> None:
    """The page: the table, the rate-distortion plane, the rate split, NLL against the swept key, pictures."""
    found, keys = result["groups"], result["differing_keys"]
    labels = [label(g["values"]) for g in found]
    best, chosen_on = chosen(found)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys) + "<th>seeds</th>" + \
        "".join(f"<th>{html.escape(h)}</th>" for _, h in COLUMNS)
    body = "".join("<tr" + (' class="best"' if i == best else "") + ">"
                   + "".join(f"<td>{html.escape(json.dumps(g['values'][k]))}</td>" for k in keys)
                   + f"<td>{len(g['runs'])}</td>" + "".join(f"<td>{cell(g[c], c)}</td>" for c, _ in COLUMNS) + "</tr>"
                   for i, g in enumerate(found))
    marked = "chosen on validation" if chosen_on == "validation" else "best test NLL"
    plot_rate_distortion([g["rate"] for g in found], [g["distortion"] for g in found], labels, best, marked,
                         out / "rate_distortion.png")
    figures = [("rate_distortion.png", "The rate-distortion plane: one point per config (error bars: the standard "
                                       f"deviation over seeds); the diagonals are equal negative ELBO D + R; starred: "
                                       f"{marked}")]
    if all(g["mutual_information"] for g in found):
        plot_rate_split(labels, [g["mutual_information"]["mean"] for g in found],
                        [g["marginal_kl"]["mean"] for g in found], out / "rate_split.png")
        figures.append(("rate_split.png", "The rate split: I(x; z) (at most log N) and KL(q(z) ‖ p(z)), stacked"))
    numeric = [k for k in keys if all(isinstance(g["values"][k], (int, float)) for g in found)]
    if len(keys) == 1 and numeric:
        plot_swept(keys[0], [g["values"][keys[0]] for g in found], [g["nll_iwae"] for g in found],
                   out / "nll_swept.png")
        figures.append(("nll_swept.png", f"NLL against {keys[0]}"))
    figures += search_figures(result.get("sweep"), out)
    pictures = "".join(f"<figure>{_image(out / name)}<figcaption>{html.escape(caption)}</figcaption></figure>"
                       for name, caption in figures)
    gallery = "".join(f"<figure><figcaption>{html.escape(label(g['values']))}</figcaption>"
                      + "".join(_image(Path(g["runs"][0]) / "eval" / name) for name in ("recon.png", "samples.png")
                                if (Path(g["runs"][0]) / "eval" / name).is_file()) + "</figure>" for g in found)
    note = ("the row with the best validation loss, whose other numbers are then honest test numbers"
            if chosen_on == "validation" else
            "the best NLL, chosen on the numbers it reports (hold out data.val_size to choose on validation)")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Comparison of {len(runs)} runs</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em}}
td,th{{border-bottom:1px solid #ddd;padding:.3em .6em;text-align:right}}tr.best{{background:#eef7ee;font-weight:bold}}
img{{max-width:100%;image-rendering:pixelated;margin-right:1em}}figure{{margin:1.5em 0}}</style>
</head><body>
<h1>Comparison of {len(runs)} runs</h1>
<p>Each run's last.pt, evaluated on its {html.escape(result['runs'][0]['split'])} split (NLL: IWAE with
k = {result['runs'][0]['iwae_samples']}); nats per example. Runs that differ only in train.seed are one
row: mean ± standard deviation over the seeds. In bold: {note}.</p>
<table><tr>{head}</tr>{body}</table>
{pictures}
<h2>Reconstructions (the same test images) and samples (the same noise for the same seed)</h2>
{gallery}
</body></html>
"""
    atomic_write_text(out / "comparison.html", page)


def search_figures(sweep_dir: str | None, out: Path) -> list[tuple[str, str]]:
    """For a search: Optuna's own figures of its history and of the parameters' importance."""
    if sweep_dir is None:
        return []
    spec = load(Path(sweep_dir))
    if not spec.search:
        return []
    study = open_study(spec, Path(sweep_dir))
    if len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) < 2:
        return []
    with experimental():
        figures = [("search_history.png", optuna.visualization.matplotlib.plot_optimization_history(study),
                    "The search's history: each trial's best validation negative ELBO, and the best so far")]
        if len(spec.search) > 1:
            figures.append(("search_importance.png", optuna.visualization.matplotlib.plot_param_importances(study),
                            "Which searched key mattered (Optuna's fANOVA importance)"))
    for name, ax, _ in figures:
        fig = ax.figure
        fig.set_size_inches(7, 4.5)
        fig.tight_layout()
        save_figure(fig, out / name)
    return [(name, caption) for name, _, caption in figures]
