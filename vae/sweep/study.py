"""The sweep's Optuna study: its sampler and pruner, the sweep directory that claims it, and the study opened.

A grid (Optuna's GridSampler) or a search space: TPE on the validation loss (optionally pruned on it
each epoch), or NSGA-II on its rate and distortion (two objectives: the Pareto front of the
rate-distortion plane); every point of a grid repeated over `seeds` values of train.seed. A study
remembers which sweep made it, and refuses another.
"""
from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path

import optuna

from vae.errors import MachineError, UserError
from vae.files import create_exclusive, refuse_links
from vae.sweep.spec import SPEC, Sweep, check
from vae.sweep.storage import storage


def sampler(sweep: Sweep) -> optuna.samplers.BaseSampler:
    if sweep.two_objectives:  # generations of a quarter of the trials (Optuna's 50 would make most searches random)
        return optuna.samplers.NSGAIISampler(population_size=min(50, max(4, sweep.trials // 4)),
                                             seed=sweep.base.train.seed)
    if sweep.search:
        return optuna.samplers.TPESampler(seed=sweep.base.train.seed)
    return optuna.samplers.GridSampler(sweep.grid_space(), seed=sweep.base.train.seed)


def pruner(sweep: Sweep) -> optuna.pruners.BasePruner:
    if sweep.prune == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    if sweep.prune == "median":
        return optuna.pruners.MedianPruner(n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def create(sweep: Sweep, sweep_dir: Path) -> None:
    """Start a sweep in a new directory: claim it with sweep.json (of two sweeps started at once into one
    directory, one gets it), then make or join the study."""
    check(sweep)
    taken = UserError(f"{sweep_dir} already holds a sweep: continue it with --resume {sweep_dir}, or choose "
                      f"another --dir")
    refuse_links(sweep_dir / SPEC)
    if (sweep_dir / SPEC).exists():
        raise taken
    if sweep.storage:  # a wrong or unreachable database, or another sweep's study, fails before anything is made
        try:
            refuse_foreign(optuna.load_study(study_name=sweep.study, storage=storage(sweep, sweep_dir)), sweep,
                           sweep_dir)
        except KeyError:  # no such study yet
            pass
    try:
        (sweep_dir / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MachineError(f"cannot make the sweep directory {sweep_dir}: {e.strerror or e}") from None
    stored = {**dataclasses.asdict(sweep), "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if not create_exclusive(sweep_dir / SPEC, json.dumps(stored, indent=2) + "\n"):
        raise taken
    open_study(sweep, sweep_dir)


def open_study(sweep: Sweep, sweep_dir: Path) -> optuna.Study:
    """The sweep's study, made if it is not there yet (a sweep killed before it made it, or the first
    machine to join a shared database). A study remembers which sweep it is: another one is refused."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "Using an existing study" before an error line
    try:
        study = optuna.create_study(storage=storage(sweep, sweep_dir), study_name=sweep.study,
                                    directions=["minimize"] * len(sweep.objectives),
                                    sampler=sampler(sweep), pruner=pruner(sweep), load_if_exists=True)
    except ValueError as e:  # e.g. a study of that name made by another program, to be maximized
        raise UserError(f"the study '{sweep.study}' cannot be this sweep's: {e}; pick another --study NAME") from None
    finally:
        optuna.logging.set_verbosity(verbosity)
    if "sweep" not in study.user_attrs:
        study.set_user_attr("sweep", sweep.identity())
    refuse_foreign(study, sweep, sweep_dir)
    return study


def refuse_foreign(study: optuna.Study, sweep: Sweep, sweep_dir: Path) -> None:
    """Refuse a study that another sweep made (another base config, grid, search, seeds or heartbeat)."""
    if study.user_attrs.get("sweep", sweep.identity()) != sweep.identity():
        where = f"in {sweep.storage}" if sweep.storage else f"in {sweep_dir / 'study.db'}"
        raise UserError(f"the study '{sweep.study}' {where} belongs to another sweep (another base config, grid, "
                        f"search, seeds, objectives or heartbeat): give this one its own name with --study NAME")


def plain_study(sweep: Sweep, sweep_dir: Path) -> optuna.Study:
    """The study without the grid sampler, to tell trials outside optimize(): GridSampler's
    after_trial may stop the study, which Optuna allows only inside optimize()."""
    return optuna.load_study(study_name=sweep.study, storage=storage(sweep, sweep_dir))
