"""Where a run directory keeps its files: the one place their paths are spelled (no torch, for the sweep's parent)."""
from __future__ import annotations

from pathlib import Path

CHECKPOINTS = "checkpoints"


def last_pt(run_dir: Path) -> Path:
    """The checkpoint written every epoch (and on a stop): what --resume continues."""
    return Path(run_dir) / CHECKPOINTS / "last.pt"


def best_pt(run_dir: Path) -> Path:
    """The checkpoint of the epoch with the lowest validation (else test) loss."""
    return Path(run_dir) / CHECKPOINTS / "best.pt"


def holds_run(run_dir: Path) -> bool:
    """A run worth keeping: one that saved a checkpoint (one killed before that can start again)."""
    return last_pt(run_dir).exists()
