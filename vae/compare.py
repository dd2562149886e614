"""Which model works better: many runs evaluated side by side, seeds as mean ± std, the rate-distortion plane.

`compare(paths)` evaluates each run's last.pt where it has no matching evaluation in eval/ yet (the
evaluate.py path), then writes comparison.csv (a row per run), comparison.json (runs and seed
groups) and a self-contained comparison.html.
"""
from __future__ import annotations

import csv
import html
import io
import json
import math
from pathlib import Path

import optuna
import yaml

from vae import rundir
from vae.checkpoint_eval import evaluate_checkpoint
from vae.config import load_config
from vae.errors import UserError
from vae.files import atomic_write_text
from vae.report import _image
from vae.viz import plot_rate_distortion, plot_rate_split, plot_swept, save_figure

# (metrics key, heading): the numbers compared, in nats per example unless named otherwise
COLUMNS = (("negative_elbo", "−ELBO"), ("distortion", "distortion"), ("rate", "rate"),
           ("nll_iwae", "NLL"), ("inference_gap", "inference gap"), ("active_units", "active units"),
           ("mutual_information", "I(x; z)"), ("marginal_kl", "KL(q(z) ‖ p(z))"), ("epochs", "epochs"),
           ("seconds", "seconds"), ("best_val", "validation −ELBO (best epoch)"))
# Keys that say where or how a run was made, not what was trained
NOT_COMPARED = ("output.dir", "data.root", "data.download", "train.device", "train.compile", "train.cuda_graph",
                "train.deterministic", "train.checkpoint_every_steps", "logging.tensorboard", "viz.every",
                "viz.digit", "eval.split", "eval.iwae_samples", "eval.seed")


def run_dirs(paths: list[Path]) -> list[Path]:
    """The run directories named: a sweep directory stands for the runs under its runs/."""
    runs = []
    for path in paths:
        if (path / "sweep.json").is_file():
            runs += sorted(p for p in (path / "runs").iterdir() if (p / "checkpoints" / "last.pt").is_file())
        elif (path / "checkpoints" / "last.pt").is_file():
            runs.append(path)
        else:
            raise UserError(f"{path} is neither a run directory (checkpoints/last.pt) nor a sweep directory "
                            f"(sweep.json)")
    if not runs:
        raise UserError(f"no trained runs in {', '.join(map(str, paths))}")
    return runs


def evaluation(run: Path, overrides: list[str]) -> dict:
    """eval/metrics.json of last.pt when it was made with the same eval.* settings, else a new one."""
    cfg = load_config(None, overrides, base=yaml.safe_load((run / "config.yaml").read_text()))
    try:
        cached = json.loads((run / "eval" / "metrics.json").read_text())
    except (OSError, ValueError):
        cached = None
    wanted = {"split": cfg.eval.split, "iwae_samples": cfg.eval.iwae_samples, "seed": cfg.eval.seed}
    last = str(run / "checkpoints" / "last.pt")
    if cached and cached.get("checkpoint") == last and cached["protocol"]["iwae_samples"] == wanted["iwae_samples"] \
            and cached["protocol"]["seed"] == wanted["seed"] and cached["split"] == wanted["split"]:
        return cached
    return evaluate_checkpoint(last, overrides)


def flat(config: dict) -> dict:
    return {f"{s}.{k}": v for s, keys in config.items() for k, v in keys.items()}


def run_row(run: Path, metrics: dict) -> dict:
    """One run's config (dotted keys) and numbers."""
    split = metrics["rate_split"] or {}
    rows = rundir.read_metrics(run)
    numbers = {key: metrics.get(key) for key, _ in COLUMNS}
    numbers.update(mutual_information=split.get("mutual_information"), marginal_kl=split.get("marginal_kl"),
                   epochs=metrics["epoch"], seconds=sum(r["seconds"] for r in rows),
                   best_val=min((r["val_loss"] for r in rows if "val_loss" in r), default=None))
    return {"run": str(run), "split": metrics["split"], "iwae_samples": metrics["protocol"]["iwae_samples"],
            "config": flat(yaml.safe_load((run / "config.yaml").read_text())), **numbers}


def differing_keys(rows: list[dict]) -> list[str]:
    """Config keys whose values are not the same in every run (but train.seed), in config order."""
    keys = [k for k in rows[0]["config"] if k not in NOT_COMPARED and k != "train.seed"]
    return [k for k in keys if len({json.dumps(r["config"].get(k)) for r in rows}) > 1]


def mean_std(values: list[float]) -> tuple[float, float]:
    """The mean and the sample standard deviation (n - 1; 0 for one value)."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def groups(rows: list[dict], keys: list[str]) -> list[dict]:
    """Runs that differ only in train.seed, with each number's mean and standard deviation over them."""
    found: dict[str, list[dict]] = {}
    for row in rows:
        found.setdefault(json.dumps([row["config"].get(k) for k in keys]), []).append(row)
    out = []
    for members in found.values():
        stats = {}
        for key, _ in COLUMNS:
            values = [m[key] for m in members if m[key] is not None]
            stats[key] = dict(zip(("mean", "std"), mean_std(values))) if values else None
        out.append({"values": {k: members[0]["config"].get(k) for k in keys}, "runs": [m["run"] for m in members],
                    "seeds": [m["config"].get("train.seed") for m in members], **stats})
    return out


def label(values: dict) -> str:
    return ", ".join(f"{k.split('.')[-1]}={v}" for k, v in values.items()) or "all runs"


def compare(paths: list[Path], out: Path, overrides: list[str] = ()) -> dict:
    """Evaluate what needs it, then write comparison.{csv,json,html} into `out`; returns the JSON."""
    runs = run_dirs(paths)
    rows = [run_row(run, evaluation(run, list(overrides))) for run in runs]
    keys = differing_keys(rows)
    found = groups(rows, keys)
    sweeps = [str(p) for p in paths if (p / "sweep.json").is_file()]
    result = {"differing_keys": keys, "eval": list(overrides), "runs": rows, "groups": found,
              "chosen": dict(zip(("group", "on"), chosen(found))), "sweep": sweeps[0] if len(sweeps) == 1 else None}
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "comparison.csv", rows, keys)
    atomic_write_text(out / "comparison.json", json.dumps(result, indent=2) + "\n")
    write_html(out, result, runs)
    return result


def write_csv(path: Path, rows: list[dict], keys: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["run", *keys, "train.seed", *(key for key, _ in COLUMNS)])
    for r in rows:
        writer.writerow([r["run"], *(json.dumps(r["config"].get(k)) for k in keys), r["config"].get("train.seed"),
                         *("" if r[key] is None else r[key] for key, _ in COLUMNS)])
    atomic_write_text(path, buf.getvalue())


def cell(stat: dict | None, key: str) -> str:
    """mean ± std, to 3 decimals (whole numbers for counts)."""
    if stat is None:
        return "—"
    digits = 0 if key in ("active_units", "epochs") else 1 if key == "seconds" else 3
    return f"{stat['mean']:.{digits}f}" + (f" ± {stat['std']:.{digits}f}" if stat["std"] else "")


def chosen(found: list[dict]) -> tuple[int, str]:
    """The group to pick, and on what: the best validation loss when every run has a validation split
    (the test numbers of that group are then honest), else the best test NLL (which flatters it)."""
    if all(g["best_val"] for g in found):
        return min(range(len(found)), key=lambda i: found[i]["best_val"]["mean"]), "validation"
    return min(range(len(found)), key=lambda i: found[i]["nll_iwae"]["mean"]), "test"


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
    from vae import sweep
    spec = sweep.load(Path(sweep_dir))
    if not spec.search:
        return []
    study = sweep.open_study(spec, Path(sweep_dir))
    if len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) < 2:
        return []
    with sweep.experimental():
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


def default_out(paths: list[Path]) -> Path:
    """A sweep compares into its own directory; a list of runs into outputs/comparison."""
    return paths[0] if len(paths) == 1 and (paths[0] / "sweep.json").is_file() else Path("outputs/comparison")

