"""Resume policy: what may change on resume, where a checkpoint stands, its random streams and best.pt."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from vae.config.load import to_dict
from vae.config.schema import MAY_CHANGE_ON_RESUME, Config
from vae.errors import UserError
from vae.files import atomic_write
from vae.run.checkpoint import load_checkpoint
from vae.run.layout import best_pt, last_pt


def restore_rng(state: dict, gen: torch.Generator) -> None:
    """Put every random stream back where the checkpoint left it (same device type only)."""
    torch.set_rng_state(state["torch"])
    if state["device_type"] != gen.device.type:
        print(f"warning: the checkpoint's random streams were on {state['device_type']}, this run is on "
              f"{gen.device.type}: training continues, but not bit-for-bit as it would have",
              file=sys.stderr)
        return
    gen.set_state(state["generator"])
    if state["cuda"] and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def position(state: dict) -> tuple[int, int]:
    """(completed epochs, steps into the next one) of a checkpoint."""
    progress = state.get("progress")
    return state["epoch"], progress["step"] if progress else 0


def last_position(run_dir: Path) -> tuple[int, int]:
    """Where a run directory's last.pt stands ((0, 0) when it has none that loads)."""
    try:
        return position(load_checkpoint(last_pt(run_dir))[0])
    except UserError:
        return 0, 0


def carry_best(source: Path | None, run_dir: Path, epoch: int) -> None:
    """Keep the run's best.pt in run_dir (copied there when forking).

    A best.pt from after `epoch` belongs to discarded work: it is removed, and the next epoch
    better than the checkpoint's best loss writes a new one.
    """
    src, dest = best_pt(source or run_dir), best_pt(run_dir)
    try:
        best = load_checkpoint(src)[0] if src.is_file() else None
    except UserError:
        best = None
    if best is None or best["epoch"] > epoch:
        dest.unlink(missing_ok=True)
    elif src.resolve() != dest.resolve():
        atomic_write(dest, lambda f: f.write(src.read_bytes()))


def check_same_run(stored: Config, new: Config) -> None:
    """Refuse a config that would continue a checkpoint as a different experiment."""
    old, now = to_dict(stored), to_dict(new)
    changed = [f"{s}.{k} (checkpoint: {old[s][k]!r}, given: {now[s][k]!r})"
               for s in old for k in old[s]
               if old[s][k] != now[s][k] and f"{s}.{k}" not in MAY_CHANGE_ON_RESUME]
    if changed:
        raise UserError(f"the checkpoint was trained with another config: {'; '.join(changed)}. "
                        f"Only {', '.join(MAY_CHANGE_ON_RESUME)} may change; start a new run instead")
