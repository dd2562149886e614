"""<run>/report.html: one self-contained page (images inlined) with config, numbers and pictures."""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import yaml

from vae.config.load import to_dict
from vae.config.schema import Config
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
STYLE = """body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
th{text-align:left;padding-right:1.5em}td,th{border-bottom:1px solid #ddd;padding:.3em;vertical-align:top}
img,canvas{image-rendering:pixelated}img{max-width:100%}figure{margin:0}figcaption{font-size:.9em;color:#555}
pre{background:#f5f5f5;padding:1em}nav a{margin-right:1em}.row{display:flex;flex-wrap:wrap;gap:2em;margin:1.5em 0}
.cards{display:flex;flex-wrap:wrap;gap:1em}.card{border:1px solid #ddd;border-radius:6px;padding:.8em;flex:1 1 240px}
.card b{font-size:1.3em;display:block}.card p{margin:.4em 0 0;font-size:.9em;color:#444}
.digit{width:168px;height:168px;border:1px solid #ccc}#sliders{display:grid;grid-template-columns:repeat(auto-fill,
minmax(300px,1fr));gap:.2em 1.5em;max-height:420px;overflow-y:auto;margin-top:1em}#sliders label{font-size:.85em}
#sliders input{width:140px;vertical-align:middle}#map{border:1px solid #ccc;cursor:crosshair;width:420px}
.legend span{margin-right:.6em;font-size:.85em}"""


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
        ("rate KL(q(z|x) || p(z))", f"{m['rate']:.3f} nats"),
        (f"NLL, IWAE-{m['protocol']['iwae_samples']}", f"{m['nll_iwae']:.3f} nats "
                                                        f"({m['nll_iwae_bits_per_dim']:.4f} bits/dim)"),
        ("inference gap (IWAE's lower bound on E KL(q(z|x) || p(z|x)))", f"{m['inference_gap']:.3f} nats"),
        ("active units", f"{m['active_units']} of {m['latent_dim']}"
                         + (f" (z1); {m['active_units_z2']} of {len(m['kl_per_dim_z2'])} (z2)" if "kl_per_dim_z2" in m else "")),
        ("rate = I(x; z) + KL(q(z) || p(z))",
         f"{rs['mutual_information']:.3f} + {rs['marginal_kl']:.3f} = {rs['sum']:.3f} nats "
         f"(I(x; z) <= log N = {rs['mutual_information_bound']:.3f})" if rs else
         "not split: z1's prior p(z1|z2) is not N(0, I) (two stochastic layers)"),
        *([("rate per layer (z1, z2)", " + ".join(f"{r:.3f}" for r in m["rate_per_layer"]) + " nats")]
          if len(m["rate_per_layer"]) > 1 else []),
        ("evaluation time", f"{m['seconds']['total']:.1f} s"),
    ]


def _image(path: Path) -> str:
    """An inline <img>; small pixel grids are shown at twice their size."""
    png = path.read_bytes()
    width = int.from_bytes(png[16:20], "big")  # from the IHDR chunk
    size = f' width="{2 * width}"' if width < 400 else ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}"{size}>'


def _figures(run_dir: Path, rows, **names) -> str:
    html_rows = []
    for row in rows:
        figures = [f"<figure>{_image(run_dir / name.format(**names))}<figcaption>"
                   f"{html.escape(caption.format(**names))}</figcaption></figure>"
                   for name, caption in row if (run_dir / name.format(**names)).is_file()]
        if figures:
            html_rows.append(f'<div class="row">{"".join(figures)}</div>')
    return "\n".join(html_rows)


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
         "With two stochastic layers z1's prior is p(z1|z2), not N(0, I): the split does not apply."),
    ]
    return '<div class="cards">' + "".join(f'<div class="card"><b>{html.escape(v)}</b><p>{html.escape(t)}</p></div>'
                                           for v, t in cards) + "</div>"


def explorer_section(run_dir: Path) -> str:
    """The live decoder, when evaluate.py wrote eval/explorer.json for it."""
    path = run_dir / "eval" / "explorer.json"
    if not path.is_file():
        return "<p>No eval/explorer.json: run evaluate.py on this checkpoint to get the live decoder.</p>"
    payload = path.read_text()
    data = json.loads(payload)
    if "absent" in data:
        return f"<p>No live decoder here: {html.escape(data['absent'])}.</p>"
    embedded = payload.replace("</", "<\\/")  # no "</script>" inside the script element
    kilobytes = len(payload.encode()) / 1024
    return f"""<p>This page runs the model's decoder itself (its weights are embedded, {kilobytes:,.0f} KB): move a
slider, click the map or draw a sample, and the image is decoded anew in the browser. Sliders are ordered by the
nats their dimension carries.</p>
<div class="row"><div>
<p><label>start from <select id="start"></select></label> <button id="sample">sample from the prior</button></p>
<div class="row"><figure><canvas id="original" class="digit" width="28" height="28"></canvas>
<figcaption>the test image</figcaption></figure><figure><canvas id="decoded" class="digit" width="28" height="28">
</canvas><figcaption>decoded from the sliders' z (Bernoulli means)</figcaption></figure></div>
</div><div style="max-width:440px"><canvas id="map" width="420" height="420"></canvas>
<div class="legend" id="legend"></div>
<p>Click the map of posterior means ({html.escape(", ".join(n for n in data["map"]["names"] if n))}) to decode that
point. <span id="map-point"></span></p></div></div>
<div id="sliders"></div>
<h3>Interpolate</h3><p><label>from <select id="from"></select></label> <label>to <select id="to"></select></label>
<input type="range" id="t" min="0" max="1" step="0.01" value="0.5"> t = <span id="t-value"></span></p>
<canvas id="between" class="digit" width="28" height="28"></canvas>
<script type="application/json" id="vae-model">{embedded}</script>
<script>{EXPLORER_JS.read_text()}</script>"""


def write_report(run_dir: Path, cfg: Config, metrics: dict, rows: list[dict]) -> None:
    """`rows` are the run's metrics.csv rows (empty for a checkpoint outside a run directory)."""
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in metric_rows(metrics))
    training = "<p>No metrics.csv beside this checkpoint.</p>"
    if rows:
        split = "val" if "val_loss" in rows[-1] else "test"
        best = min(rows, key=lambda r: r.get(f"{split}_loss", math.inf))
        name = "validation" if split == "val" else "test"
        training = (f"<p>Trained {rows[-1]['epoch']} epochs; best {name} negative ELBO "
                    f"{best[f'{split}_loss']:.3f} nats at epoch {best['epoch']}.</p>")
    training += _figures(run_dir, [[("images/loss_curves.png", "Training curves: negative ELBO, distortion, "
                                                               "rate and active units per epoch")]])
    name = cfg.class_names[cfg.viz.digit]
    pictures = _figures(run_dir, PICTURES, digit=cfg.viz.digit,
                        name=f"digit {name}" if cfg.data.dataset == "mnist" else f"class {name}")
    sections = [("summary", "Summary", summary_cards(metrics)),
                ("explore", "Explore the decoder", explorer_section(run_dir)), ("pictures", "Pictures", pictures),
                ("training", "Training", training), ("numbers", "All the numbers", f"<table>{table}</table>"),
                ("config", "Config", f"<pre>{html.escape(yaml.safe_dump(to_dict(cfg), sort_keys=False))}</pre>")]
    contents = "".join(f'<a href="#{key}">{title}</a>' for key, title, _ in sections)
    body = "\n".join(f'<section id="{key}"><h2>{title}</h2>\n{text}</section>' for key, title, text in sections)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>VAE report: {html.escape(run_dir.name)}</title>
<style>{STYLE}</style>
</head><body>
<h1>VAE report: {html.escape(run_dir.name)}</h1>
<nav>{contents}</nav>
{body}
</body></html>
"""
    atomic_write_text(run_dir / "report.html", page)
