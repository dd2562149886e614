"""Sweeps: many runs of one config, each an Optuna trial and an ordinary run directory.

A grid (Optuna's GridSampler) or a search space (TPE, optionally pruned on the validation loss
each epoch), every point repeated over `seeds` values of train.seed. The study lives in
<sweep>/study.db (SQLite) or a shared database (`storage`); heartbeats mark the trial of a worker
that died as stale, and Optuna's retry callback queues it again, to resume from its last.pt.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from vae.config import Config, check_key, from_dict, parse_yaml, split_override, to_dict
from vae.errors import Interrupted, UserError
from vae.files import atomic_write_text

SPEC = "sweep.json"
DISTRIBUTIONS = ("log", "uniform", "int", "choice")
HEARTBEAT_SECONDS = 10
POLL_SECONDS = 1  # how often a worker with nothing to take looks again
TABLE_RACE_TRIES = 3


@dataclass(frozen=True)
class Sweep:
    """What a sweep is: written to <dir>/sweep.json when it starts, read back to resume it."""

    config: dict  # the base config, resolved (defaults + file + overrides)
    grid: dict[str, list[str]] = field(default_factory=dict)  # key -> values, each as YAML text
    search: dict[str, str] = field(default_factory=dict)  # key -> "log(a,b)", "uniform(a,b)", ...
    seeds: int = 1  # each point trained with train.seed, train.seed + 1, ...
    trials: int = 0  # points of a search (a grid has one trial per point)
    prune: str = ""  # "", median or halving: stop unpromising trials of a search early
    storage: str = ""  # a database URL shared by many machines; "" = <dir>/study.db
    heartbeat: int = HEARTBEAT_SECONDS  # seconds between a running trial's heartbeats
    study: str = "sweep"  # the study's name in its storage: machines that share one join by it
    argv: list[str] = field(default_factory=list)

    @property
    def base(self) -> Config:
        return from_dict(self.config)

    def grid_space(self) -> dict[str, list[str]]:
        """The grid with the seeds as one more axis."""
        if self.seeds == 1:
            return self.grid
        first = self.base.train.seed
        return {**self.grid, "train.seed": [str(first + i) for i in range(self.seeds)]}

    def size(self) -> int:
        """How many trials the sweep runs."""
        points = math.prod(len(v) for v in self.grid_space().values())
        return points if not self.search else self.trials


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """['loss.beta=0.5,1,2', 'model.hidden_dims=[400],[200,200]'] -> {key: YAML texts}."""
    grid = {}
    for item in items:
        key, text = split_override(item)
        values = [v.strip() for v in split_top_level(text)]
        if not text.strip() or not all(values):
            raise UserError(f"--grid {item}: give one or more values, e.g. --grid {key}=0.5,1,2")
        if key in grid:
            raise UserError(f"--grid names {key} twice")
        grid[key] = values
    return grid


def split_top_level(text: str) -> list[str]:
    """Split on the commas outside brackets: '[1,2],[3]' -> ['[1,2]', '[3]']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return parts + [text[start:]]


def parse_search(items: list[str]) -> dict[str, str]:
    """['train.lr=log(3e-4,5e-3)'] -> {'train.lr': 'log(3e-4,5e-3)'}, each checked."""
    space = {}
    for item in items:
        key, text = split_override(item)
        space[key] = text.strip()
        distribution(key, space[key])  # refuse a malformed one now
    return space


def distribution(key: str, text: str) -> tuple[str, list]:
    """'log(3e-4,5e-3)' -> ('log', [0.0003, 0.005])."""
    m = re.fullmatch(r"(\w+)\((.*)\)", text.strip())
    if not m or m.group(1) not in DISTRIBUTIONS:
        raise UserError(f"--search {key}={text}: write log(low,high), uniform(low,high), int(low,high) or "
                        f"choice(a,b,...)")
    kind, args = m.group(1), [number(a, f"--search {key}") for a in split_top_level(m.group(2))]
    if kind != "choice":
        if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args) \
                or not args[0] < args[1] or (kind == "log" and args[0] <= 0):
            raise UserError(f"--search {key}={text}: {kind} takes two numbers low < high"
                            + (" above 0" if kind == "log" else ""))
    return kind, args


def number(text: str, source: str) -> Any:
    """'3e-4' -> 0.0003 (YAML 1.1 reads an exponent without a dot as a string), '2' -> 2, else YAML."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return parse_yaml(text, source)


def trial_config(sweep: Sweep, values: dict[str, Any], run_dir: Path) -> Config:
    """The base config with one point's values (YAML texts of the grid, numbers of a search)."""
    raw = to_dict(sweep.base)
    for key, value in values.items():
        section, name = key.split(".")
        raw[section][name] = parse_yaml(value, f"{key}={value}") if isinstance(value, str) else value
    raw["output"]["dir"] = str(run_dir)
    return from_dict(raw)


def check(sweep: Sweep) -> None:
    """Refuse a sweep that cannot run, before anything trains: every point's config is validated."""
    for key in [*sweep.grid, *sweep.search]:
        check_key(key)
    if sweep.grid and sweep.search:
        raise UserError("give --grid or --search, not both: a search draws every value it varies")
    if "train.seed" in [*sweep.grid, *sweep.search] and sweep.seeds > 1:
        raise UserError("--seeds repeats each point over train.seed: do not also sweep train.seed")
    if not sweep.grid and not sweep.search:
        raise UserError("an empty sweep: give --grid KEY=V1,V2,... or --search KEY=log(low,high) ...")
    if sweep.search:
        if sweep.seeds > 1:
            raise UserError("--seeds repeats the points of a grid; for a search, choose a config on "
                            "validation first, then run it over seeds with --grid")
        if sweep.trials < 1:
            raise UserError("a search needs --trials N (N >= 1)")
        if not sweep.base.data.val_size:
            raise UserError("a search is steered by the validation loss: set data.val_size (e.g. "
                            "data.val_size=10000); the test set never chooses anything")
    if sweep.prune and not sweep.search:
        raise UserError("--prune stops trials of a search (--search) early; a grid trains every point")
    for point in grid_points(sweep.grid_space()):
        trial_config(sweep, point, Path("."))  # a wrong type or value: one line naming the key


def grid_points(space: dict[str, list[str]]) -> list[dict[str, str]]:
    points = [{}]
    for key, values in space.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


@contextmanager
def experimental():
    """Quiet Optuna's warnings that heartbeats, their retry callback and its matplotlib figures are
    experimental (since 2.8): they are what this module is built on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def storage(sweep: Sweep, sweep_dir: Path) -> RDBStorage:
    """The study's database, with heartbeats and Optuna's retry of trials whose heartbeat stopped."""
    url = sweep.storage or f"sqlite:///{(sweep_dir / 'study.db').resolve()}"
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None  # workers take turns
    for attempt in range(TABLE_RACE_TRIES):
        try:
            with experimental():
                return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=sweep.heartbeat,
                                  grace_period=3 * sweep.heartbeat,
                                  heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback())
        except sqlalchemy.exc.IntegrityError:
            if attempt + 1 == TABLE_RACE_TRIES:
                raise UserError(f"cannot open the sweep's storage {url}: its tables could not be made") from None
            # Machines that start at once on an empty database race to make Optuna's tables.
            print(f"{url}: another process was making the study's tables; opening it again", file=sys.stderr)
            time.sleep(1 + attempt)
        except Exception as e:  # noqa: BLE001 - drivers fail in their own ways
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            hint = " (pip install 'psycopg[binary]')" if "psycopg" in repr(e.__cause__ or e) else ""
            raise UserError(f"cannot open the sweep's storage {url}: {reason[:200]}{hint}") from None


def sampler(sweep: Sweep) -> optuna.samplers.BaseSampler:
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
    """Start a sweep in a new directory: sweep.json, then the study."""
    check(sweep)
    if (sweep_dir / SPEC).exists():
        raise UserError(f"{sweep_dir} already holds a sweep: continue it with --resume {sweep_dir}, or "
                        f"choose another --dir")
    if sweep.storage:
        storage(sweep, sweep_dir)  # a wrong or unreachable database fails before anything is made
    try:
        (sweep_dir / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make the sweep directory {sweep_dir}: {e.strerror or e}") from None
    stored = {**dataclasses.asdict(sweep), "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    atomic_write_text(sweep_dir / SPEC, json.dumps(stored, indent=2) + "\n")
    open_study(sweep, sweep_dir)


def load(sweep_dir: Path) -> Sweep:
    try:
        raw = json.loads((sweep_dir / SPEC).read_text())
    except FileNotFoundError:
        raise UserError(f"{sweep_dir} is not a sweep directory (no {SPEC})") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{sweep_dir / SPEC} is unreadable: {e}") from None
    names = {f.name for f in dataclasses.fields(Sweep)}
    return Sweep(**{k: v for k, v in raw.items() if k in names})


def open_study(sweep: Sweep, sweep_dir: Path) -> optuna.Study:
    """The sweep's study, made if it is not there yet (a sweep killed before it made it, or the
    first machine to join a shared database)."""
    return optuna.create_study(storage=storage(sweep, sweep_dir), study_name=sweep.study, direction="minimize",
                               sampler=sampler(sweep), pruner=pruner(sweep), load_if_exists=True)


def run_name(sweep: Sweep, trial: optuna.Trial, values: dict[str, Any]) -> str:
    """A new trial's run directory name: its grid point (index and values), or its number."""
    if sweep.search:
        return f"trial-{trial.number:04d}"
    space = sweep.grid_space()
    index = grid_points(space).index({key: values[key] for key in space})
    return f"{index:03d}_" + "_".join(f"{key.split('.')[-1]}={safe(values[key])}" for key in space)


def safe(value: Any) -> str:
    return re.sub(r"[^\w.+-]+", "-", str(value)).strip("-") or "x"


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


def objective(sweep: Sweep, sweep_dir: Path):
    """Train one trial as an ordinary run (resumed from its last.pt when it has one)."""
    def run(trial: optuna.Trial) -> float:
        try:
            return train_trial(sweep, sweep_dir, trial)
        except UserError as e:
            trial.set_user_attr("error", str(e))
            raise
    return run


def train_trial(sweep: Sweep, sweep_dir: Path, trial: optuna.Trial) -> float:
    """The trial's run: trained, or continued from its last.pt; its value is best.pt's loss."""
    values = suggest(sweep, trial)
    retried = trial.user_attrs.get("run_dir")  # a retry carries the run it continues
    if retried is None and not sweep.search and started_elsewhere(trial, values):
        # Two workers asked for the last points at once: GridSampler gives the second a point again.
        raise UserError("not trained: another worker had started this grid point")
    run_dir = Path(retried) if retried else sweep_dir / "runs" / run_name(sweep, trial, values)
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("pid", os.getpid())
    cfg = trial_config(sweep, values, run_dir)

    def report(row: dict, last: bool) -> None:
        if sweep.search:
            trial.report(row["val_loss"], row["epoch"])
            if not last and trial.should_prune():  # a finished run (train.epochs, its budget or patience) is complete
                raise optuna.TrialPruned(f"validation loss {row['val_loss']:.3f} at epoch {row['epoch']}")
    from vae.training import train  # here, not at the top: see configure_worker
    resume = run_dir if (run_dir / "checkpoints" / "last.pt").exists() else None
    result = train(cfg, resume=resume, argv=sweep.argv, after_epoch=report)
    trial.set_user_attr("epochs", len(result.rows))
    return result.best["loss"]


def started_elsewhere(trial: optuna.Trial, values: dict[str, Any]) -> bool:
    """Whether another trial of this grid point is running or complete."""
    others = trial.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE))
    return any(t.number != trial.number and t.params == values for t in others)


def work(sweep: Sweep, sweep_dir: Path) -> None:
    """One worker: take trials until the sweep is done (waiting for other workers' last trials,
    and retrying those whose worker died once their heartbeat goes stale)."""
    study = open_study(sweep, sweep_dir)
    run = objective(sweep, sweep_dir)
    while True:
        trials = study.get_trials(deepcopy=False)
        fresh = [t for t in trials if "failed_trial" not in t.system_attrs]  # not retries
        if any(t.state == TrialState.WAITING for t in trials) or len(fresh) < sweep.size():
            try:
                study.optimize(run, n_trials=1, catch=(UserError,))
            except (Interrupted, KeyboardInterrupt) as e:
                retry_interrupted(sweep, sweep_dir, os.getpid())
                raise Interrupted(getattr(e, "signum", signal.SIGINT), f"sweep stopped: the running trial is saved "
                                  f"and queued again; continue with: python sweep.py --resume {sweep_dir}") from None
        elif any(t.state == TrialState.RUNNING for t in trials):  # others' last trials: wait, and watch them
            time.sleep(POLL_SECONDS)
            with experimental():
                optuna.storages.fail_stale_trials(study)
            retry_unstarted(sweep, sweep_dir)
        else:
            return


def retry_interrupted(sweep: Sweep, sweep_dir: Path, pid: int) -> None:
    """After a stop by signal, this worker's trial (its checkpoint saved) is queued again at once:
    running, or failed by Optuna's handling of KeyboardInterrupt (a failure with no error of ours)."""
    study = plain_study(sweep, sweep_dir)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.FAIL)):
        if t.user_attrs.get("pid") == pid and "error" not in t.user_attrs:
            requeue(study, t)


def retry_unstarted(sweep: Sweep, sweep_dir: Path) -> None:
    """Queue again the running trials whose worker died before their first heartbeat (Optuna never
    finds those stale): they never reached the objective, and are older than the grace period."""
    study = plain_study(sweep, sweep_dir)
    now = datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if "pid" not in t.user_attrs and (now - t.datetime_start).total_seconds() > 3 * sweep.heartbeat:
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


def usable_cores() -> int:
    """The cores this process may run on: those of its CPU affinity (taskset, a cgroup's cpuset), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    return max(1, usable_cores() // workers)


def configure_worker(workers: int) -> None:
    """A worker process's torch threads: its share of the cores, so that N workers do not oversubscribe them.

    torch (and the training code) is imported only in the processes that train: the parent of N
    workers never does, which saves its 4 s of imports (measured, 2-core CPU) before they start.
    """
    import torch
    torch.set_num_threads(threads_per_worker(workers))


def run_workers(sweep_dir: Path, workers: int, script: Path) -> None:
    """Run the sweep with `workers` local processes (one in this process when 1), each with its
    share of the cores; Ctrl-C stops every worker after its current step, each saving its trial."""
    sweep = load(sweep_dir)
    if workers == 1:
        work(sweep, sweep_dir)
        return
    cmd = [sys.executable, str(script), "--worker", str(sweep_dir), "--workers", str(workers)]
    procs = [subprocess.Popen(cmd) for _ in range(workers)]
    codes = []
    for proc in procs:
        while True:
            try:
                codes.append(proc.wait())
                break
            except KeyboardInterrupt:  # the workers got it too: wait for them to save
                continue
    interrupted = [c for c in codes if c in (128 + signal.SIGINT, 128 + signal.SIGTERM)]
    if interrupted:
        raise Interrupted(interrupted[0] - 128, f"sweep stopped; continue with: python sweep.py --resume {sweep_dir}")
    if any(codes):
        raise UserError(f"a sweep worker exited with status {max(codes)}; continue with: "
                        f"python sweep.py --resume {sweep_dir}")


def summary(sweep_dir: Path) -> str:
    """Counts of the trials by state, and the best one (by its best.pt loss)."""
    sweep = load(sweep_dir)
    trials = open_study(sweep, sweep_dir).get_trials(deepcopy=False)
    counts = {s.name.lower(): n for s in TrialState if (n := sum(t.state == s for t in trials))}
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    lines = [f"{len(done)} of {sweep.size()} trials complete ({', '.join(f'{n} {s}' for s, n in counts.items())})"]
    for t in trials:
        if t.state == TrialState.FAIL and "error" in t.user_attrs:
            lines.append(f"  trial {t.number} failed: {t.user_attrs['error']}")
    if done:
        best = min(done, key=lambda t: t.value)
        chosen_on = "validation" if sweep.base.data.val_size else "test"
        lines.append(f"best: {best.user_attrs['run_dir']} ({chosen_on} loss {best.value:.3f} nats)")
    lines.append(f"compare the runs: python evaluate.py --compare {sweep_dir}")
    return "\n".join(lines)
