"""comparison.html: the seed groups' table, the figures, and each group's reconstructions and samples."""
from __future__ import annotations

import html
import math
from pathlib import Path

from vae.compare.table import COLUMNS, MOVED, cell, label, plain
from vae.evaluate.page import figure_rows, image, page, table
from vae.files import atomic_write_text


def write_html(out: Path, result: dict, figures: list[tuple[Path, str]]) -> None:
    """The page, around the figures already drawn."""
    found, keys, best = result["groups"], result["differing_keys"], result["chosen"]["group"]
    head = [*keys, "seeds", *(h for _, h in COLUMNS)]
    rows = [[*(plain(g["values"][k], "unset") for k in keys),
             f"{len(g['runs'])}" + (f" ({g['unfinished']} unfinished)" if g["unfinished"] else ""),
             *(cell(g[c], c) for c, _ in COLUMNS)] for g in found]
    gallery = "".join(f"<figure><figcaption>{html.escape(label(g['values']))}</figcaption>"
                      + "".join(image(Path(g["runs"][0]) / "eval" / name) for name in ("recon.png", "samples.png")
                                if (Path(g["runs"][0]) / "eval" / name).is_file()) + "</figure>" for g in found)
    note = ("the row with the best validation loss, whose other numbers are then honest test numbers"
            if result["chosen"]["on"] == "validation" else
            "the best NLL, chosen on the numbers it reports (hold out data.val_size to choose on validation)")
    first = result["runs"][0]
    ref = result["reference"]
    shifts = [[*(plain(g["values"][k], "unset") for k in keys),
               *(cell(d[c], c, "se", "+") for c, _ in MOVED)]
              for i, (g, d) in enumerate(zip(found, result["moved"])) if i != ref]
    where = f"""<h2>Where the nats moved, against {html.escape(label(found[ref]['values']))}</h2>
<p>Each row's change of the means: Δ NLL = Δ distortion + Δ rate − Δ gap (up to the Monte Carlo noise between
the two ELBO estimates), and Δ rate = Δ I(x; z) + Δ KL(q(z) ‖ p(z)) where both rate splits are defined. A better
prior shows as a smaller KL(q(z) ‖ p(z)), the prior's mismatch with the aggregate posterior; a better posterior
as a smaller gap (a tighter bound, which lowers the negative ELBO towards the NLL); a better decoder as a
smaller distortion. In every column negative is smaller; ± is the standard error of the difference over the
seeds. I(x; z) is measured with the evaluated images as the aggregate posterior, so it is at most log N
({math.log(first['examples']):.3f} for these {first['examples']:,}); where both sides sit at that ceiling,
a change of rate shows whole in KL(q(z) ‖ p(z)).</p>
{table([*keys, *(h for _, h in MOVED)], shifts, numbers_from=len(keys))}""" if shifts and keys else ""
    body = f"""<p>Each run's last.pt, evaluated on its {html.escape(first['split'])} split (NLL: IWAE with
k = {first['iwae_samples']}); nats per example. Runs that differ only in train.seed are one
row: mean ± standard deviation over the seeds. In bold: {note}. A run marked unfinished stopped before its
schedule's end (train.epochs, its time budget or patience): its numbers are of a model trained less.</p>
{table(head, rows, marked=best, numbers_from=len(keys))}
{where}
{figure_rows([[f] for f in figures])}
<h2>Reconstructions (the same test images) and samples (the same noise for the same seed)</h2>
{gallery}"""
    atomic_write_text(out / "comparison.html", page(f"Comparison of {len(result['runs'])} runs", body))
