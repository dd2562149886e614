"""The run directory's own files: the clobber guard, the lock, run.json, config.yaml and metrics.csv."""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import torch
import torchvision

from vae import files
from vae.cli import invoked_as
from vae.config.load import to_yaml
from vae.config.schema import Config
from vae.errors import MachineError, UserError
from vae.files import atomic_write_text, read_text_no_follow, refuse_links
from vae.run.layout import CHECKPOINTS, best_pt, holds_run, last_pt

METRIC_COLUMNS = ("epoch", "train_loss", "train_recon", "train_kl", "val_loss", "val_recon", "val_kl",
                  "test_loss", "test_recon", "test_kl", "test_kl_z2", "test_active_units", "seconds")
# Empty without a validation split or a second stochastic layer (and in older runs).
OPTIONAL_COLUMNS = ("val_loss", "val_recon", "val_kl", "test_kl_z2")
INTEGER_COLUMNS = ("epoch", "test_active_units")
RUN_FILES = ("metrics.csv", "config.yaml", "run.json", "report.html")  # never opened through a link
RUN_ENTRIES = (CHECKPOINTS, "images", "eval", "scores", "tensorboard", *RUN_FILES)  # (the folders may be links)


def check_fresh(run_dir: Path, overwrite: bool) -> None:
    """Refuse to start a new run on top of an existing one unless told to overwrite it."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output.dir {run_dir} exists and is not a directory")
    if holds_run(run_dir) and not overwrite:
        raise UserError(f"{run_dir} already holds a run: resume it with {invoked_as('train')} --resume {run_dir}, "
                        f"choose another output.dir=DIR, or pass --overwrite to replace it")


def check_space(run_dir: Path, needed_bytes: int) -> None:
    """Fail before training when the run directory cannot be made or its disk is too full."""
    existing = next(p for p in [run_dir, *run_dir.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise UserError(f"cannot make output.dir {run_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK):
        raise MachineError(f"cannot write output.dir {run_dir}: {existing} is not writable")
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise MachineError(f"only {free / 2**20:.0f} MiB free on the disk of {run_dir}; this run needs about "
                        f"{needed_bytes / 2**20:.0f} MiB for its checkpoints and images")


def locked(run_dir: Path):
    """Hold the run directory for this process while the block runs: another training into it stops."""
    refuse_links(*(run_dir / name for name in RUN_FILES), last_pt(run_dir), best_pt(run_dir))
    return files.locked(run_dir, f"{run_dir} is being written by another training process{{pid}}: wait for it "
                                 f"to finish, or choose another output.dir=DIR")


def create(run_dir: Path, clear: bool) -> None:
    """Make the run directory (emptied of an earlier run's files when `clear`)."""
    try:
        if clear and holds_run(run_dir):
            for name in RUN_ENTRIES:
                entry = run_dir / name
                if entry.is_dir():
                    shutil.rmtree(entry)
                elif entry.exists():
                    entry.unlink()
        for sub in (CHECKPOINTS, "images"):
            (run_dir / sub).mkdir(parents=True, exist_ok=True)
        for stale in [p for sub in ("", CHECKPOINTS, "images", "eval") for p in (run_dir / sub).glob(".*.tmp")]:
            stale.unlink()  # left by a process killed while writing (see files.atomic_write)
    except OSError as e:
        raise MachineError(f"cannot write the run directory {run_dir}: {e.strerror or e}") from None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def write_run_info(run_dir: Path, cfg: Config, argv: list[str], device: torch.device, processes: int,
                   precision: str, threads: int, compiled: bool = False,
                   step_ms: dict[str, dict[int, float]] | None = None) -> None:
    """config.yaml (the resolved config) and run.json (how, where and with what this ran: the `precision`, torch
    `threads` and whether the step is `compiled`, and where `auto` chose them the milliseconds of a step in each
    it timed).

    A resumed run keeps the earlier invocations' records under "previous".
    """
    atomic_write_text(run_dir / "config.yaml", to_yaml(cfg))
    info = {
        "argv": argv,
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "precision": precision,
        "threads": threads,
        "compiled": compiled,
        **({"step_ms": step_ms} if step_ms else {}),
        "processes": processes,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "git_commit": _git_commit(),
        "previous": [],
    }
    try:
        old = json.loads(read_text_no_follow(run_dir / "run.json"))
        info["previous"] = old.pop("previous", []) + [old]
    except (OSError, ValueError, AttributeError):
        pass
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.csv as one dict per epoch; an optional column's key only where its cell holds a value."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    try:
        with path.open(newline="") as f:
            return [{k: (int(row[k]) if k in INTEGER_COLUMNS else float(row[k])) for k in METRIC_COLUMNS
                     if k not in OPTIONAL_COLUMNS or row.get(k)}
                    for row in csv.DictReader(f)]
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{path} is malformed: expected the columns {','.join(METRIC_COLUMNS)}") from None


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """Rewrite metrics.csv whole and atomically: a kill never leaves half a row."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / "metrics.csv", buf.getvalue())

