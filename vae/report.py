"""<run>/report.html: one self-contained page (images inlined) with config, numbers and pictures."""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import yaml

from vae.config import Config, to_dict
from vae.files import atomic_write_text

# (file under the run directory, caption), in reading order; missing files are skipped.
PICTURES = (
    ("images/loss_curves.png", "Training curves: negative ELBO, distortion, rate and active units per epoch"),
    ("eval/recon.png", "Test images (rows of originals) above their reconstructions"),
    ("eval/digits.png", "Reconstructions per digit class"),
    ("eval/digit{digit}.png", "Reconstructions of the digit {digit}"),
    ("eval/samples.png", "Samples from the prior p(z)"),
    ("eval/interpolation.png", "Interpolation in latent space between test digits"),
    ("eval/traversal.png", "Traversals of the most informative latent dimensions"),
    ("eval/kl_per_dim.png", "Average KL per latent dimension"),
    ("eval/latent_scatter.png", "Posterior means coloured by label"),
    ("eval/manifold.png", "Decoded manifold of the 2-D latent space"),
    ("eval/nats_histogram.png", "Per-example negative ELBO and IWAE NLL"),
    ("eval/worst.png", "The worst-reconstructed test images (originals above reconstructions)"),
)


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


def write_report(run_dir: Path, cfg: Config, metrics: dict, rows: list[dict]) -> None:
    """`rows` are the run's metrics.csv rows (empty for a checkpoint outside a run directory)."""
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in metric_rows(metrics))
    training = ""
    if rows:
        split = "val" if "val_loss" in rows[-1] else "test"
        best = min(rows, key=lambda r: r.get(f"{split}_loss", math.inf))
        name = "validation" if split == "val" else "test"
        training = (f"<p>Trained {rows[-1]['epoch']} epochs; best {name} negative ELBO "
                    f"{best[f'{split}_loss']:.3f} nats at epoch {best['epoch']}.</p>")
    figures = []
    for name, caption in PICTURES:
        path = run_dir / name.format(digit=cfg.viz.digit)
        if path.is_file():
            figures.append(f"<figure>{_image(path)}<figcaption>{html.escape(caption.format(digit=cfg.viz.digit))}"
                           f"</figcaption></figure>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>VAE report: {html.escape(run_dir.name)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
th{{text-align:left;padding-right:1.5em}}td,th{{border-bottom:1px solid #ddd;padding:.3em}}
img{{max-width:100%;image-rendering:pixelated}}figure{{margin:1.5em 0}}pre{{background:#f5f5f5;padding:1em}}</style>
</head><body>
<h1>VAE report: {html.escape(run_dir.name)}</h1>
{training}
<h2>Evaluation</h2><table>{table}</table>
<h2>Pictures</h2>
{"".join(figures)}
<h2>Config</h2><pre>{html.escape(yaml.safe_dump(to_dict(cfg), sort_keys=False))}</pre>
</body></html>
"""
    atomic_write_text(run_dir / "report.html", page)
