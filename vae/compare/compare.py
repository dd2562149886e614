"""Which model works better: many runs evaluated side by side, seeds as mean ± std, the rate-distortion plane.

`compare(paths)` evaluates each run's last.pt where it has no matching evaluation in eval/ yet (the
evaluate.py path), then writes comparison.csv (a row per run), comparison.json (runs and seed
groups) and a self-contained comparison.html.
"""
from __future__ import annotations

import json
from pathlib import Path

from vae.compare.figures import draw
from vae.compare.page import write_html
from vae.compare.table import COLUMNS, chosen, differing_keys, flat, groups, moved, reference, write_csv
from vae.config.load import from_dict, load_config, read_config_file, to_dict
from vae.config.schema import Config
from vae.errors import UserError
from vae.evaluate.analyze import evaluate_checkpoint
from vae.files import atomic_write_text
from vae.run import rundir
from vae.run.checkpoint import checkpoint_id
from vae.run.layout import last_pt
from vae.run.resume import check_same_run
from vae.sweep.report import front_runs
from vae.sweep.spec import run_dir
from vae.train.schedule import stops_early


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


def run_config(run: Path) -> Config:
    """A run's resolved config (its config.yaml), checked."""
    try:
        return from_dict(read_config_file(run / "config.yaml"))
    except UserError as e:
        raise UserError(f"{run} is not a run this version can compare: {e}") from None


def evaluation(run: Path, stored: Config, overrides: list[str]) -> dict:
    """eval/metrics.json when it measured this very last.pt under this very config (the overrides
    applied), else a new evaluation. An override that would change the experiment is refused either way."""
    cfg = load_config(None, overrides, base=to_dict(stored))
    check_same_run(stored, cfg)
    try:
        cached = json.loads((run / "eval" / "metrics.json").read_text())
    except (OSError, ValueError):
        cached = None
    whole = isinstance(cached, dict) and {"protocol", "rate_split", "split", "epoch"} <= cached.keys()
    if whole and cached.get("checkpoint_sha256") == checkpoint_id(last_pt(run).read_bytes()) \
            and same_config(cached.get("config"), cfg):
        return cached
    return evaluate_checkpoint(last_pt(run), overrides)


def same_config(stored, cfg: Config) -> bool:
    """Whether a metrics.json's config is `cfg`, keys added since it was written taking their defaults."""
    try:
        return to_dict(from_dict(stored)) == to_dict(cfg)
    except UserError:
        return False


def finished(cfg: Config, metrics: dict, rows: list[dict]) -> bool:
    """Whether the evaluated checkpoint ends the run's schedule: train.epochs, or a stop on its time budget
    or patience (a run a failure cut short does not)."""
    if metrics["steps_into_next_epoch"] or not rows[:metrics["epoch"]]:
        return False
    epoch, done = metrics["epoch"], rows[:metrics["epoch"]]
    split = "val" if "val_loss" in rows[-1] else "test"
    best = min(done, key=lambda r: r[f"{split}_loss"])
    best = {"loss": best[f"{split}_loss"], "epoch": best["epoch"]}
    return epoch >= cfg.train.epochs or bool(stops_early(cfg.train, best, epoch, done))


def run_row(run: Path, cfg: Config, metrics: dict) -> dict:
    """One run's config (dotted keys) and numbers, and whether it finished its schedule."""
    split = metrics["rate_split"] or {}
    rows = rundir.read_metrics(run)
    numbers = {key: metrics.get(key) for key, _ in COLUMNS}
    numbers.update(mutual_information=split.get("mutual_information"), marginal_kl=split.get("marginal_kl"),
                   epochs=metrics["epoch"], seconds=sum(r["seconds"] for r in rows),
                   best_val=min((r["val_loss"] for r in rows if "val_loss" in r), default=None))
    return {"run": str(run), "split": metrics["split"], "examples": metrics["examples"],
            "iwae_samples": metrics["protocol"]["iwae_samples"],
            "finished": finished(cfg, metrics, rows), "config": flat(to_dict(cfg)), **numbers}


def compare(paths: list[Path], out: Path, overrides: list[str] = ()) -> dict:
    """Evaluate what needs it, then write comparison.{csv,json,html} into `out`; returns the JSON."""
    runs = run_dirs(paths)
    configs = [run_config(run) for run in runs]  # a broken run fails before anything is evaluated
    rows = [run_row(run, cfg, evaluation(run, cfg, list(overrides))) for run, cfg in zip(runs, configs)]
    keys = differing_keys(rows)
    found = groups(rows, keys)
    ref = reference(found, keys)
    sweeps = [p for p in paths if (p / "sweep.json").is_file()]
    on_front = {str(run_dir(sweeps[0], name)) for name in front_runs(sweeps[0])} if len(sweeps) == 1 else set()
    result = {"differing_keys": keys, "eval": list(overrides), "runs": rows, "groups": found,
              "chosen": dict(zip(("group", "on"), chosen(found))),
              "reference": ref, "moved": moved(found, ref),
              "front": [i for i, g in enumerate(found) if on_front & set(g["runs"])],
              "sweep": str(sweeps[0]) if len(sweeps) == 1 else None}
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "comparison.csv", rows, keys)
    atomic_write_text(out / "comparison.json", json.dumps(result, indent=2) + "\n")
    write_html(out, result, draw(result, out))
    return result


def default_out(paths: list[Path]) -> Path:
    """A sweep compares into its own directory; a list of runs into outputs/comparison."""
    return paths[0] if len(paths) == 1 and (paths[0] / "sweep.json").is_file() else Path("outputs/comparison")
