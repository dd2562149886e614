"""A trial as an ordinary run: its values drawn or taken from the grid, its run directory named, claimed by
this process, trained (or continued from its last.pt), and its objectives reported."""
from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from vae.config.load import parse_yaml
from vae.errors import MachineError, UserError
from vae.run.layout import last_pt
from vae.sweep.spec import OBJECTIVES, Sweep, distribution, grid_points, point_name, run_dir, trial_config

WORKER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # this process, among all that share a study


def claim(trial_number: int) -> str:
    """What marks a trial as this process's: host, pid and a random token (pids repeat across machines and
    containers sharing a database), and the trial's number (a retry's copy inherits its original's marks)."""
    return f"{WORKER}#{trial_number}"


def run_name(sweep: Sweep, trial: optuna.Trial, values: dict[str, Any]) -> str:
    """A new trial's run directory name: its grid point (index and values), or its number."""
    if sweep.search:
        return f"trial-{trial.number:04d}"
    space = sweep.grid_space()
    return point_name(grid_points(space).index({key: values[key] for key in space}), {k: values[k] for k in space})


def suggest(sweep: Sweep, trial: optuna.Trial) -> dict[str, Any]:
    """This trial's values: its grid point's texts, or numbers drawn from the search space."""
    values = {key: trial.suggest_categorical(key, texts) for key, texts in sweep.grid_space().items()}
    for key, text in sweep.search.items():
        kind, args = distribution(key, text)
        if kind == "choice":
            values[key] = parse_yaml(trial.suggest_categorical(key, [str(a) for a in args]), key)
        elif kind == "int":
            values[key] = trial.suggest_int(key, int(args[0]), int(args[1]))
        else:
            values[key] = trial.suggest_float(key, float(args[0]), float(args[1]), log=kind == "log")
    return values


def objective(sweep: Sweep, sweep_dir: Path, workers: int = 1):
    """Train one trial as an ordinary run (resumed from its last.pt when it has one).

    The workers start together, so each one's first trial is checked against its 1/`workers` share of
    the free memory; by a later trial the others already hold theirs, and what is free is its own.
    """
    trained = []

    def run(trial: optuna.Trial) -> float | tuple[float, float]:
        share = workers if not trained else 1
        trained.append(trial.number)
        try:
            return train_trial(sweep, sweep_dir, trial, share)
        except UserError as e:
            trial.set_user_attr("error", str(e))
            raise
        except OSError as e:  # the machine's, not the trial's: queued again by the worker, for a resume
            trial.set_user_attr("requeued_because", reason(e))
            raise
    return run


def reason(e: OSError) -> str:
    """Why the machine stopped a trial, in one line."""
    return str(e) if isinstance(e, MachineError) else f"{type(e).__name__}: {e}"


def train_trial(sweep: Sweep, sweep_dir: Path, trial: optuna.Trial, memory_share: int = 1) -> float | tuple:
    """The trial's run: trained, or continued from its last.pt; its values are its objectives at best.pt's
    epoch (its loss, or its rate and distortion). The run is named in the study and found under this
    process's own sweep directory."""
    values = suggest(sweep, trial)
    retried = trial.user_attrs.get("run")  # a retry carries the run it continues
    if retried is None and not sweep.search and (other := started_elsewhere(trial, values)) is not None:
        # Two workers asked for the last points at once: GridSampler gives the second a point again.
        trial.set_user_attr("duplicate_of", other)
        raise UserError(f"not trained: trial {other} has its grid point")
    name = retried if retried is not None else run_name(sweep, trial, values)
    where = run_dir(sweep_dir, name)
    trial.set_user_attr("run", name)
    trial.set_user_attr("pid", os.getpid())
    trial.set_user_attr("claim", claim(trial.number))
    cfg = trial_config(sweep, values, where)

    def report(row: dict, last: bool) -> None:
        if sweep.search and not sweep.two_objectives:  # Optuna reports and prunes one objective only
            trial.report(row["val_loss"], row["epoch"])
            if not last and trial.should_prune():  # a finished run (train.epochs, its budget or patience) is complete
                raise optuna.TrialPruned(f"validation loss {row['val_loss']:.3f} at epoch {row['epoch']}")
    from vae.train.loop import train  # here, not at the top: see configure_worker
    resume = where if last_pt(where).exists() else None
    result = train(cfg, resume=resume, argv=sweep.argv, after_epoch=report, memory_share=memory_share)
    trial.set_user_attr("epochs", len(result.rows))
    if not sweep.two_objectives:
        return result.best["loss"]  # on the validation split when the base config holds one out, else the test split
    best = next(r for r in result.rows if r["epoch"] == result.best["epoch"])
    if not all(OBJECTIVES[name] in best for name in sweep.objectives):
        raise UserError("a two-objective trial needs the validation split's rate and distortion: keep "
                        "data.val_size above 0")
    return tuple(float(best[OBJECTIVES[name]]) for name in sweep.objectives)


def started_elsewhere(trial: optuna.Trial, values: dict[str, Any]) -> int | None:
    """The number of another trial of this grid point, running or complete; None when there is none."""
    others = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE))
    return next((t.number for t in others if t.number != trial.number and t.params == values), None)
