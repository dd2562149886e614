"""Which model works better: many runs evaluated side by side, seeds as mean ± std, the rate-distortion plane.

`compare(paths)` evaluates each run's last.pt where it has no matching evaluation in eval/ yet (the
evaluate.py path), then writes comparison.csv (a row per run), comparison.json (runs and seed
groups) and a self-contained comparison.html.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from vae.compare.figures import draw
from vae.compare.page import write_html
from vae.compare.table import COLUMNS, chosen, differing_keys, flat, groups, write_csv
from vae.config.load import load_config
from vae.errors import UserError
from vae.evaluate.analyze import evaluate_checkpoint
from vae.files import atomic_write_text
from vae.run import rundir
from vae.run.layout import last_pt


def run_dirs(paths: list[Path]) -> list[Path]:
    """The run directories named: a sweep directory stands for the runs under its runs/."""
    runs = []
    for path in paths:
        if (path / "sweep.json").is_file():
            runs += sorted(p for p in (path / "runs").iterdir() if last_pt(p).is_file())
        elif last_pt(path).is_file():
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
    last = str(last_pt(run))
    if cached and cached.get("checkpoint") == last and cached["protocol"]["iwae_samples"] == wanted["iwae_samples"] \
            and cached["protocol"]["seed"] == wanted["seed"] and cached["split"] == wanted["split"]:
        return cached
    return evaluate_checkpoint(last, overrides)


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
    write_html(out, result, draw(result, out))
    return result


def default_out(paths: list[Path]) -> Path:
    """A sweep compares into its own directory; a list of runs into outputs/comparison."""
    return paths[0] if len(paths) == 1 and (paths[0] / "sweep.json").is_file() else Path("outputs/comparison")
