"""<run>/report.html: one self-contained page (images inlined) with config, numbers and pictures."""
from __future__ import annotations

import html
import json
import math
import string
from pathlib import Path

from vae.config.load import to_yaml
from vae.config.schema import Config
from vae.evaluate.page import figure_rows, page
from vae.files import atomic_write_text

# Rows of (file under the run directory, caption), shown side by side where they compare; missing files are skipped.
PICTURES = (
    (("eval/recon.png", "Test images (rows of originals) above their reconstructions"),
     ("eval/digit{digit}.png", "Reconstructions of the {name}")),
    (("eval/samples.png", "Samples from the prior p(z)"),
     ("eval/interpolation.png", "Interpolation in latent space between test images")),
    (("eval/traversal.png", "Traversals of the most informative latent dimensions"),
     ("eval/kl_per_dim.png", "Average KL per latent dimension")),
    (("eval/latent_scatter.png", "Posterior means coloured by label"),
     ("eval/manifold.png", "Decoded manifold of the 2-D latent space")),
    (("eval/digits.png", "Reconstructions per class"),),
    (("eval/nats_histogram.png", "Per-example negative ELBO and IWAE NLL"),
     ("eval/worst.png", "The worst-reconstructed test images (originals above reconstructions)")),
)
EXPLORER_JS = Path(__file__).with_name("explorer.js")
EXPLORER_HTML = Path(__file__).with_name("explorer.html")


def not_split(m: dict) -> str:
    """Why a run's rate is not split (metrics.json of older runs say nothing: two stochastic layers then)."""
    return m.get("not_defined", {}).get("rate_split", "two stochastic layers: z1's prior p(z1|z2) is not a fixed "
                                                      "distribution")


def metric_rows(m: dict) -> list[tuple[str, str]]:
    rs = m["rate_split"]
    return [
        ("checkpoint", f"{m['checkpoint']} (epoch {m['epoch']}"
                       + (f" + {m['steps_into_next_epoch']} steps" if m["steps_into_next_epoch"] else "")
                       + f", {m['device']})"),
        ("evaluated on", f"{m['examples']} {m['split']} images; IWAE k={m['protocol']['iwae_samples']}, "
                         f"seed {m['protocol']['seed']}; {m['protocol']['targets']}"),
        ("negative ELBO", f"{m['negative_elbo']:.3f} nats ({m['negative_elbo_bits_per_dim']:.4f} bits/dim)"),
        ("distortion (reconstruction)", f"{m['distortion']:.3f} nats"),
        ("rate KL(q(z|x) || p(z))", f"{m['rate']:.3f} nats ({m['protocol']['elbo']})"),
        ("prior, posterior, likelihood", f"{m.get('prior', 'normal')}, {m.get('posterior', 'gaussian')}, "
                                         f"{m.get('likelihood', 'bernoulli')}"),
        (f"NLL, IWAE-{m['protocol']['iwae_samples']}", f"{m['nll_iwae']:.3f} nats "
                                                        f"({m['nll_iwae_bits_per_dim']:.4f} bits/dim)"),
        ("inference gap (IWAE's lower bound on E KL(q(z|x) || p(z|x)))", f"{m['inference_gap']:.3f} nats"),
        ("active units", f"{m['active_units']} of {m['latent_dim']}"
                         + (f" (z1); {m['active_units_z2']} of {m['config']['model']['latent2_dim']} (z2)"
                            if "active_units_z2" in m else "")
                         + (f" ({m['not_defined']['active_units']})" if "active_units" in m.get("not_defined", {})
                            else "")),
        ("rate = I(x; z) + KL(q(z) || p(z))",
         f"{rs['mutual_information']:.3f} + {rs['marginal_kl']:.3f} = {rs['sum']:.3f} nats "
         f"(I(x; z) <= log N = {rs['mutual_information_bound']:.3f})" if rs else
         f"not split: {not_split(m)}"),
        *([("rate per layer (z1, z2)", " + ".join(f"{r:.3f}" for r in m["rate_per_layer"]) + " nats")]
          if len(m["rate_per_layer"]) > 1 else []),
        *([("KL per dimension", f"not defined: {m['not_defined']['kl_per_dim']}")]
          if m.get("kl_per_dim", 0) is None else []),
        ("evaluation time", f"{m['seconds']['total']:.1f} s"),
    ]


def pictures(run_dir: Path, rows, **names) -> list[list[tuple[Path, str]]]:
    """PICTURES-like rows of (file, caption) templates filled in with `names`, the files under `run_dir`."""
    return [[(run_dir / name.format(**names), caption.format(**names)) for name, caption in row] for row in rows]


def summary_cards(m: dict) -> str:
    """The headline numbers, each with a sentence on what it means."""
    k, rs = m["protocol"]["iwae_samples"], m["rate_split"]
    cards = [
        (f"NLL {m['nll_iwae']:.2f} nats", f"IWAE-{k} estimate of −log p(x) on the {m['split']} images: how "
         f"likely the model finds them. Lower is better; the number to compare models by."),
        (f"−ELBO {m['negative_elbo']:.2f} = {m['distortion']:.2f} + {m['rate']:.2f}",
         "Distortion (nats to describe an image given its code) plus rate (nats the code carries beyond the "
         "prior): the training objective, an upper bound on the NLL."),
        (f"{m['active_units']} of {m['latent_dim']} units active",
         "Latent dimensions whose posterior mean varies across images (variance > 0.01); the rest collapsed "
         "to the prior and carry nothing."),
        (f"I(x; z) {rs['mutual_information']:.2f} + KL {rs['marginal_kl']:.2f} nats" if rs else "rate not split",
         "The rate split into I(x; z), what the code says about which image it is (at most log N), and "
         "KL(q(z) ‖ p(z)), how far the codes' aggregate is from the prior." if rs else
         f"Not defined here: {not_split(m)}."),
    ]
    return '<div class="cards">' + "".join(f'<div class="card"><b>{html.escape(v)}</b><p>{html.escape(t)}</p></div>'
                                           for v, t in cards) + "</div>"


def explorer_section(run_dir: Path) -> str:
    """The live decoder (explorer.html's markup driving explorer.js), when evaluate.py wrote eval/explorer.json."""
    path = run_dir / "eval" / "explorer.json"
    if not path.is_file():
        return ("<p>No eval/explorer.json: evaluate this checkpoint (vae-evaluate, or evaluate.py) to get the live "
                "decoder.</p>")
    payload = path.read_text()
    data = json.loads(payload)
    if "absent" in data:
        return f"<p>No live decoder here: {html.escape(data['absent'])}.</p>"
    markup = EXPLORER_HTML.read_text().split("-->\n", 1)[1]  # without its comment
    return string.Template(markup).substitute(
        kilobytes=f"{len(payload.encode()) / 1024:,.0f}",
        map_names=html.escape(", ".join(n for n in data["map"]["names"] if n)),
        payload=payload.replace("</", "<\\/"),  # no "</script>" inside the script element
        script=EXPLORER_JS.read_text())


def write_report(run_dir: Path, cfg: Config, metrics: dict, rows: list[dict]) -> None:
    """`rows` are the run's metrics.csv rows (empty for a checkpoint outside a run directory)."""
    numbers = "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                                  for k, v in metric_rows(metrics)) + "</table>"
    training = "<p>No metrics.csv beside this checkpoint.</p>"
    if rows:
        split = "val" if "val_loss" in rows[-1] else "test"
        best = min(rows, key=lambda r: r.get(f"{split}_loss", math.inf))
        name = "validation" if split == "val" else "test"
        training = (f"<p>Trained {rows[-1]['epoch']} epochs; best {name} negative ELBO "
                    f"{best[f'{split}_loss']:.3f} nats at epoch {best['epoch']}.</p>")
    training += figure_rows([[(run_dir / "images" / "loss_curves.png", "Training curves: negative ELBO, distortion, "
                                                                       "rate and active units per epoch")]])
    name = metrics["classes"][cfg.viz.digit]
    shown = figure_rows(pictures(run_dir, PICTURES, digit=cfg.viz.digit,
                                 name=f"digit {name}" if cfg.data.dataset == "mnist" else f"class {name}"))
    sections = [("summary", "Summary", summary_cards(metrics)),
                ("explore", "Explore the decoder", explorer_section(run_dir)), ("pictures", "Pictures", shown),
                ("training", "Training", training), ("numbers", "All the numbers", numbers),
                ("config", "Config", f"<pre>{html.escape(to_yaml(cfg))}</pre>")]
    contents = "".join(f'<a href="#{key}">{title}</a>' for key, title, _ in sections)
    body = "\n".join(f'<section id="{key}"><h2>{title}</h2>\n{text}</section>' for key, title, text in sections)
    atomic_write_text(run_dir / "report.html", page(f"VAE report: {run_dir.name}", f"<nav>{contents}</nav>\n{body}"))
