"""Which local Optuna storage holds up under several worker processes: SQLite (RDBStorage, what
sweeps use) or the journal file, side by side.

    python -m bench.storage_contention [--workers 4] [--trials 100]

Each of N processes asks for and tells `trials` trials as fast as it can (no training: the worst
case for contention) on one fresh storage; the script counts the trials that made it, the
errors, and the seconds.
"""
from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

import optuna


def storage(kind: str, folder: Path):
    if kind == "sqlite":
        return optuna.storages.RDBStorage(f"sqlite:///{folder / 'study.db'}",
                                          engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(folder / "journal.log")))


def hammer(kind: str, folder: str, trials: int) -> int:
    """Ask and tell `trials` trials; returns the errors met."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="s", storage=storage(kind, Path(folder)))
    errors = 0
    for _ in range(trials):
        try:
            trial = study.ask()
            study.tell(trial, trial.suggest_float("x", 0, 1) ** 2)
        except Exception:  # noqa: BLE001 - counting what breaks, whatever it is
            errors += 1
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--trials", type=int, default=100, help="per worker")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    for kind in ("sqlite", "journal"):
        with tempfile.TemporaryDirectory() as folder:
            optuna.create_study(study_name="s", storage=storage(kind, Path(folder)))
            t0 = time.perf_counter()
            with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
                errors = sum(pool.starmap(hammer, [(kind, folder, args.trials)] * args.workers))
            seconds = time.perf_counter() - t0
            done = len(optuna.load_study(study_name="s", storage=storage(kind, Path(folder))).get_trials(
                states=(optuna.trial.TrialState.COMPLETE,)))
            print(f"{kind:8s} {args.workers} workers x {args.trials} trials: {done} complete, {errors} errors, "
                  f"{seconds:.1f} s ({done / seconds:.0f} trials/s)", flush=True)


if __name__ == "__main__":
    main()
