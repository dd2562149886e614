"""What a sweep is, without Optuna or torch: the grid and search grammar, seeds, sweep.json, and each
point's config, checked before anything trains."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from vae.config.load import apply_overrides, check_key, from_dict, parse_yaml, split_override, to_dict
from vae.config.schema import NOT_COMPARED, Config
from vae.errors import UserError
from vae.files import read_text_no_follow

SPEC = "sweep.json"
DISTRIBUTIONS = ("log", "uniform", "int", "choice")
PRUNERS = ("", "median", "halving")
# What a trial's values are: best.pt's loss (one objective), or its best epoch's validation rate and distortion
# from metrics.csv (two, searched by NSGA-II for the Pareto front of the rate-distortion plane)
OBJECTIVES = {"rate": "val_kl", "distortion": "val_recon"}
ONE_OBJECTIVE, TWO_OBJECTIVES = ["loss"], ["rate", "distortion"]
HEARTBEAT_SECONDS = 10
MAX_TRIALS = 10_000  # the most trials one sweep runs: grid points x seeds, or a search's --trials
MAX_NAME_BYTES = 200  # a trial's run directory name (file systems take 255)
RUN_NAME = re.compile(r"[\w+=-][\w.+=-]*")  # what a trial's run directory may be called: one plain folder name


@dataclass(frozen=True)
class Sweep:
    """What a sweep is: written to <dir>/sweep.json when it starts, read back to resume it."""

    config: dict  # the base config, resolved (defaults + file + overrides)
    grid: dict[str, list[str]] = field(default_factory=dict)  # key -> values, each as YAML text
    search: dict[str, str] = field(default_factory=dict)  # key -> "log(a,b)", "uniform(a,b)", ...
    seeds: int = 1  # each point trained with train.seed, train.seed + 1, ...
    trials: int = 0  # points of a search (a grid has one trial per point)
    prune: str = ""  # "", median or halving: stop unpromising trials of a search early
    objectives: list[str] = field(default_factory=lambda: list(ONE_OBJECTIVE))  # or TWO_OBJECTIVES, for a search
    storage: str = ""  # a database URL shared by many machines, never with its password; "" = <dir>/study.db
    heartbeat: int = HEARTBEAT_SECONDS  # seconds between a running trial's heartbeats
    study: str = "sweep"  # the study's name in its storage: machines that share one join by it
    argv: list[str] = field(default_factory=list)  # the command line, passwords taken out

    @property
    def base(self) -> Config:
        return from_dict(self.config)

    def identity(self) -> str:
        """What makes two sweeps one sweep, so that a study refuses another one: a hash of the base config
        (but the keys that say where a run is made, which differ between machines), the grid or search, the
        seeds, the trials, the pruner, the objectives and the heartbeat (machines that judge staleness
        differently would retry each other's live trials)."""
        config = {section: {k: v for k, v in keys.items() if f"{section}.{k}" not in NOT_COMPARED}
                  for section, keys in self.config.items()}
        what = [config, self.grid, self.search, self.seeds, self.trials, self.prune, self.heartbeat]
        if self.objectives != ONE_OBJECTIVE:  # the sweeps made before objectives were a choice keep their identity
            what.append(self.objectives)
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    @property
    def two_objectives(self) -> bool:
        return self.objectives == TWO_OBJECTIVES

    def grid_space(self) -> dict[str, list[str]]:
        """The grid with the seeds as one more axis."""
        if self.seeds == 1:
            return self.grid
        first = self.base.train.seed
        return {**self.grid, "train.seed": [str(first + i) for i in range(self.seeds)]}

    def size(self) -> int:
        """How many trials the sweep runs (counted, not listed)."""
        return self.trials if self.search else math.prod(len(v) for v in self.grid.values()) * self.seeds


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
    kind, args = m.group(1), [parse_yaml(a, f"--search {key}") for a in split_top_level(m.group(2))]
    if kind != "choice":
        if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args) \
                or not args[0] < args[1] or (kind == "log" and args[0] <= 0):
            raise UserError(f"--search {key}={text}: {kind} takes two numbers low < high"
                            + (" above 0" if kind == "log" else ""))
    return kind, args


def trial_config(sweep: Sweep, values: dict[str, Any], run_dir: Path) -> Config:
    """The base config with one point's values (YAML texts of the grid, numbers of a search) as overrides."""
    overrides = [f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in values.items()]
    raw = apply_overrides(to_dict(sweep.base), overrides)
    raw["output"]["dir"] = str(run_dir)
    return from_dict(raw)


def check(sweep: Sweep) -> None:
    """Refuse a sweep that cannot run, before anything trains: every point's config is validated."""
    if not 1 <= sweep.size() <= MAX_TRIALS or sweep.seeds > MAX_TRIALS:
        raise UserError(f"a sweep runs 1 to {MAX_TRIALS:,} trials; this one would run {sweep.size():,} "
                        f"(grid points x --seeds, or --trials): sweep fewer values")
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
    if sweep.objectives not in (ONE_OBJECTIVE, TWO_OBJECTIVES):
        raise UserError(f"--objectives {','.join(map(str, sweep.objectives))}: give loss (the validation -ELBO) "
                        f"or rate,distortion (its two terms, for the Pareto front)")
    if sweep.two_objectives and not sweep.search:
        raise UserError("--objectives rate,distortion steers a search (--search); a grid trains every point")
    if sweep.two_objectives and sweep.prune:
        raise UserError("--prune cannot stop trials of a two-objective search: Optuna prunes one objective only "
                        "(drop --prune, or search --objectives loss)")
    for point in grid_points(sweep.grid_space()):
        trial_config(sweep, point, Path("."))  # a wrong type or value: one line naming the key


def grid_points(space: dict[str, list[str]]) -> list[dict[str, str]]:
    points = [{}]
    for key, values in space.items():
        points = [{**p, key: v} for p in points for v in values]
    return points


def load(sweep_dir: Path) -> Sweep:
    """The sweep of a sweep directory, checked: a broken or foreign sweep.json is one line."""
    path = sweep_dir / SPEC
    try:
        raw = json.loads(read_text_no_follow(path))
    except FileNotFoundError:
        raise UserError(f"{sweep_dir} is not a sweep directory (no {SPEC})") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable: {e}") from None
    try:
        if not isinstance(raw, dict):
            raise UserError("not a mapping")
        sweep = Sweep(**{k: v for k, v in raw.items() if k in {f.name for f in dataclasses.fields(Sweep)}})
        for name, kind in (("config", dict), ("grid", dict), ("search", dict), ("seeds", int), ("trials", int),
                           ("prune", str), ("objectives", list), ("storage", str), ("heartbeat", int),
                           ("study", str), ("argv", list)):
            if not isinstance(getattr(sweep, name), kind):
                raise UserError(f"{name} is not a {kind.__name__}")
        if not all(isinstance(v, list) and all(isinstance(t, str) for t in v) for v in sweep.grid.values()) \
                or not all(isinstance(v, str) for v in sweep.search.values()) or sweep.prune not in PRUNERS \
                or sweep.heartbeat < 1:
            raise UserError("its grid, search, pruner or heartbeat is malformed")
        if password_of(sweep.storage) or any(password_of(word) for word in sweep.argv):
            raise UserError("it holds a database password (written by an older version): take it out of "
                            "storage and argv, and give it with PGPASSWORD or ~/.pgpass")
        check(sweep)
    except (UserError, TypeError) as e:
        raise UserError(f"{path} is not a sweep this version can run: {e}") from None
    return sweep


def database_url(text: str) -> tuple[str, URL | None]:
    """A command-line word split into what stands before a database URL (`--storage=`) and the URL parsed
    (None when the word holds none)."""
    head, sep, tail = text.partition("://")
    if not sep:
        return text, None
    prefix = head.rpartition("=")[0] + "=" if "=" in head else ""
    try:
        return prefix, make_url(text[len(prefix):])
    except (ArgumentError, ValueError):
        return text, None


def password_of(text: str) -> str:
    """The password in a database URL, in its user part or its query ('' when it has none)."""
    url = database_url(text)[1]
    return (url.password or url.query.get("password") or "") if url is not None else ""


def without_password(text: str) -> str:
    """A database URL (or a command-line word holding one) with its password taken out, as SQLAlchemy
    parses it: scheme://user@host/db (a special character in a password must be percent-encoded there)."""
    prefix, url = database_url(text)
    if url is None or not password_of(text):
        return text
    return prefix + url._replace(password=None).difference_update_query(["password"]).render_as_string(
        hide_password=False)


def point_name(index: int, values: dict[str, str]) -> str:
    """A grid point's run directory name, e.g. 003_beta=0.5_seed=1: at most MAX_NAME_BYTES, a hash of the
    whole ending a name cut short."""
    name = f"{index:03d}_" + "_".join(f"{key.split('.')[-1]}={safe(value)}" for key, value in values.items())
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return name.encode()[:MAX_NAME_BYTES - 13].decode(errors="ignore") + "-" + digest


def run_dir(sweep_dir: Path, name: object) -> Path:
    """Where a trial's run lives in this sweep directory: runs/<name>, the name checked (it may come from a
    shared database)."""
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name) or len(name.encode()) > 255:
        raise UserError(f"the study names a trial's run {name!r}, which is not a run name of a sweep: it was not "
                        f"written by this project's sweep command")
    return sweep_dir / "runs" / name


def safe(value: Any) -> str:
    return re.sub(r"[^\w.+-]+", "-", str(value)).strip("-") or "x"
