"""The sweep's Optuna study and its worker loop: storage, samplers, pruners, the trials' runs, their retries.

A grid (Optuna's GridSampler) or a search space: TPE on the validation loss (optionally pruned on it
each epoch), or NSGA-II on its rate and distortion (two objectives: the Pareto front of the
rate-distortion plane); every point of a grid repeated over `seeds` values of train.seed. The study lives in
<sweep>/study.db (SQLite) or a shared database (`storage`); heartbeats mark the trial of a worker
that died as stale, and Optuna's retry callback queues it again, to resume from its last.pt.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys
import time
import uuid
import warnings
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from vae.config.load import parse_yaml
from vae.errors import Interrupted, MachineError, UserError
from vae.files import create_exclusive, refuse_links
from vae.run.layout import last_pt
from vae.sweep.spec import (
    OBJECTIVES,
    SPEC,
    Sweep,
    check,
    distribution,
    grid_points,
    load,
    password_of,
    point_name,
    run_dir,
    trial_config,
    without_password,
)

POLL_SECONDS = 1  # how often a worker with nothing to take looks again
WORKER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"  # this process, among all that share a study
STORAGE_ENV = "VAE_SWEEP_STORAGE"  # the storage URL with its password, for this process and its workers only
TABLE_RACE_TRIES = 3


@contextmanager
def experimental():
    """Quiet Optuna's warnings that heartbeats, their retry callback and its matplotlib figures are
    experimental (since 2.8): they are what this module is built on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def storage_url(sweep: Sweep, sweep_dir: Path) -> str:
    """The database to open: <dir>/study.db, or the shared one, with the password given to this process
    (--storage, passed on to its workers in STORAGE_ENV) when there is one; else the driver finds it
    (PostgreSQL: PGPASSWORD, ~/.pgpass)."""
    if not sweep.storage:
        return f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    given = os.environ.get(STORAGE_ENV, "")
    return given if without_password(given) == sweep.storage else sweep.storage


def storage(sweep: Sweep, sweep_dir: Path) -> RDBStorage:
    """The study's database, with heartbeats and Optuna's retry of trials whose heartbeat stopped."""
    url = storage_url(sweep, sweep_dir)
    shown = without_password(url)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None  # workers take turns
    for attempt in range(TABLE_RACE_TRIES):
        try:
            with experimental():
                return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=sweep.heartbeat,
                                  grace_period=3 * sweep.heartbeat,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback())
        except sqlalchemy.exc.IntegrityError:
            if attempt + 1 == TABLE_RACE_TRIES:
                raise UserError(f"cannot open the sweep's storage {shown}: its tables could not be made") from None
            # Machines that start at once on an empty database race to make Optuna's tables.
            print(f"{shown}: another process was making the study's tables; opening it again", file=sys.stderr)
            time.sleep(1 + attempt)
        except Exception as e:  # noqa: BLE001 - drivers fail in their own ways
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            password = password_of(url)
            reason = without_password(reason.replace(password, "***") if password else reason)
            hint = " (pip install 'psycopg[binary]')" if "psycopg" in repr(e.__cause__ or e) else ""
            raise UserError(f"cannot open the sweep's storage {shown}: {reason[:200]}{hint}") from None


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
        except OSError as e:  # the machine's, not the trial's: queued again by `work`, for a resume
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


def work(sweep: Sweep, sweep_dir: Path, workers: int = 1) -> None:
    """One of `workers` on this machine: take trials until the sweep is done (waiting for other workers'
    last trials, and retrying those whose worker died once their heartbeat goes stale). A trial stopped by
    the machine (an OSError: a full disk, a permission) is queued again and this worker stops, saying why."""
    study = open_study(sweep, sweep_dir)
    run = objective(sweep, sweep_dir, workers)
    while True:
        trials = study.get_trials(deepcopy=False)
        fresh = [t for t in trials if "failed_trial" not in t.system_attrs]  # not retries
        if any(t.state == TrialState.WAITING for t in trials) or len(fresh) < sweep.size():
            try:
                study.optimize(run, n_trials=1, catch=(UserError,))
            except (Interrupted, KeyboardInterrupt) as e:
                retry_interrupted(sweep, sweep_dir)
                raise Interrupted(getattr(e, "signum", signal.SIGINT), f"sweep stopped: the running trial is saved "
                                  f"and queued again; continue with: python sweep.py --resume {sweep_dir}") from None
            except OSError as e:
                retry_failed(sweep, sweep_dir)
                raise UserError(f"a trial stopped on {reason(e)}; it is queued again: free the cause, "
                            f"then continue with: python sweep.py --resume {sweep_dir}") from None
        elif any(t.state == TrialState.RUNNING for t in trials):  # others' last trials: wait, and watch them
            time.sleep(POLL_SECONDS)
            with experimental():
                optuna.storages.fail_stale_trials(study)
            retry_unstarted(sweep, sweep_dir)
        else:
            return


def claim(trial_number: int) -> str:
    """What marks a trial as this process's: host, pid and a random token (pids repeat across machines and
    containers sharing a database), and the trial's number (a retry's copy inherits its original's marks)."""
    return f"{WORKER}#{trial_number}"


def requeued(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a copy of `trial` was already queued (Optuna lists each copy's ancestors in retry_history)."""
    return any(trial.number in t.system_attrs.get("retry_history", []) for t in study.get_trials(deepcopy=False))


def retry_interrupted(sweep: Sweep, sweep_dir: Path) -> None:
    """After a stop by signal, this worker's trial (its checkpoint saved) is queued again at once:
    running, or failed by Optuna's handling of KeyboardInterrupt (a failure with no error of ours)."""
    study = plain_study(sweep, sweep_dir)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL)):
        if t.user_attrs.get("claim") == claim(t.number) and "error" not in t.user_attrs and not requeued(study, t):
            requeue(study, t)


def retry_failed(sweep: Sweep, sweep_dir: Path) -> None:
    """Queue again this worker's trial that the machine stopped (its reason kept in its user attributes)."""
    study = plain_study(sweep, sweep_dir)
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if t.user_attrs.get("claim") == claim(t.number) and "requeued_because" in t.user_attrs \
                and not requeued(study, t):
            requeue(study, t)


def retry_unstarted(sweep: Sweep, sweep_dir: Path) -> None:
    """Queue again the running trials whose worker died before it claimed them (Optuna never finds those
    stale, having no heartbeat of theirs): older than the grace period, and not claimed as themselves."""
    study = plain_study(sweep, sweep_dir)
    now = datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not t.user_attrs.get("claim", "").endswith(f"#{t.number}") \
                and (now - t.datetime_start).total_seconds() > 3 * sweep.heartbeat:
            requeue(study, t)


def plain_study(sweep: Sweep, sweep_dir: Path) -> optuna.Study:
    """The study without the grid sampler, to tell trials outside optimize(): GridSampler's
    after_trial may stop the study, which Optuna allows only inside optimize()."""
    return optuna.load_study(study_name=sweep.study, storage=storage(sweep, sweep_dir))


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Fail a trial (if running) and queue a copy of it, as Optuna's retry callback does for a stale one."""
    if trial.state == TrialState.RUNNING:
        study.tell(trial.number, state=TrialState.FAIL)
    with experimental():
        RetryHeartbeatStaleTrialCallback()(study, study.trials[trial.number])


def summary(sweep_dir: Path) -> str:
    """Counts of the trials by state, and the best one (by its best.pt loss)."""
    sweep = load(sweep_dir)
    study = open_study(sweep, sweep_dir)
    trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): n for s in TrialState if (n := sum(t.state == s for t in trials))}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    lines = [f"{len(done)} of {sweep.size()} trials complete ({', '.join(f'{n} {s}' for s, n in counts.items())})"]
    for t in trials:
        if t.state == TrialState.FAIL and "duplicate_of" in t.user_attrs:
            lines.append(f"  trial {t.number} was not trained: trial {t.user_attrs['duplicate_of']} has its grid point")
        elif t.state == TrialState.FAIL and "error" in t.user_attrs:
            lines.append(f"  trial {t.number} failed: {t.user_attrs['error']}")
        elif t.state == TrialState.FAIL and "requeued_because" in t.user_attrs:
            lines.append(f"  trial {t.number} was stopped by the machine and queued again: "
                         f"{t.user_attrs['requeued_because']}")

    def where(t: optuna.trial.FrozenTrial) -> object:
        return run_dir(sweep_dir, t.user_attrs["run"]) if "run" in t.user_attrs else f"trial {t.number}"
    if done and sweep.two_objectives:
        lines.append("the Pareto front on validation (the trials no other trial dominates in rate and distortion):")
        lines += [f"  {where(t)}: rate {t.values[0]:.3f}, distortion {t.values[1]:.3f} nats"
                  for t in sorted(study.best_trials, key=lambda t: t.values[0])]
    elif done:
        best = min(done, key=lambda t: t.value)
        chosen_on = "validation" if sweep.base.data.val_size else "test"
        lines.append(f"best: {where(best)} ({chosen_on} loss {best.value:.3f} nats)")
    lines.append(f"compare the runs: python evaluate.py --compare {sweep_dir}")
    return "\n".join(lines)


def search_study(sweep_dir: Path, missing: str) -> tuple[Sweep, optuna.Study | None]:
    """A sweep and, for a search, its study, read only (a comparison never makes or marks a study); None for
    a grid, or with a warning that `missing` is not drawn when the study cannot be opened."""
    sweep = load(sweep_dir)
    if not sweep.search:
        return sweep, None
    try:
        return sweep, plain_study(sweep, sweep_dir)
    except (UserError, KeyError) as e:
        print(f"warning: no {missing}: {e}", file=sys.stderr)
        return sweep, None


def front_runs(sweep_dir: Path) -> list[str]:
    """The runs of a two-objective search's Pareto front, by name: Optuna's best trials, those that no other
    complete trial dominates (at most as large in validation rate and distortion, and smaller in one)."""
    sweep, study = search_study(sweep_dir, "Pareto front")
    if study is None or not sweep.two_objectives:
        return []
    return [t.user_attrs["run"] for t in study.best_trials if "run" in t.user_attrs]


def draw_search(sweep_dir: Path, out: Path) -> list[tuple[Path, str]]:
    """For a search: Optuna's own figures of its history and of the searched keys' importance, as PNGs in `out`
    with their captions (none for a grid, or under two complete trials)."""
    sweep, study = search_study(sweep_dir, "figures of the search")
    if study is None or len(study.get_trials(states=(TrialState.COMPLETE,))) < 2:
        return []
    from vae.evaluate.plots import save_figure  # here: plots imports torch, which the sweep's parent never needs
    # two objectives: the history of their sum, the negative ELBO (the front is drawn on the comparison's plane)
    elbo = {"target": lambda t: sum(t.values), "target_name": "rate + distortion"} if sweep.two_objectives else {}
    with experimental():
        figures = [("search_history.png", optuna.visualization.matplotlib.plot_optimization_history(study, **elbo),
                    "The search's history: each trial's best validation negative ELBO, and the best so far")]
        if len(sweep.search) > 1:
            warnings.filterwarnings("ignore", "PedAnovaImportanceEvaluator computes")  # low values: what we want
            importance = optuna.visualization.matplotlib.plot_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), **elbo)
            figures.append(("search_importance.png", importance,
                            "Which searched key mattered for the validation negative ELBO (Optuna's PED-ANOVA "
                            "importance)"))
    for name, ax, _ in figures:
        ax.figure.set_size_inches(7, 4.5)
        ax.figure.tight_layout()
        save_figure(ax.figure, out / name)
    return [(out / name, caption) for name, _, caption in figures]
