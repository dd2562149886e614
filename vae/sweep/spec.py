"""What a sweep is, without Optuna or torch: the grid and search grammar, seeds, sweep.json, and each
point's config, checked before anything trains."""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vae.config.load import apply_overrides, check_key, from_dict, parse_yaml, split_override, to_dict
from vae.config.schema import Config
from vae.errors import UserError

SPEC = "sweep.json"
DISTRIBUTIONS = ("log", "uniform", "int", "choice")
HEARTBEAT_SECONDS = 10


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


def load(sweep_dir: Path) -> Sweep:
    try:
        raw = json.loads((sweep_dir / SPEC).read_text())
    except FileNotFoundError:
        raise UserError(f"{sweep_dir} is not a sweep directory (no {SPEC})") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{sweep_dir / SPEC} is unreadable: {e}") from None
    names = {f.name for f in dataclasses.fields(Sweep)}
    return Sweep(**{k: v for k, v in raw.items() if k in names})


def safe(value: Any) -> str:
    return re.sub(r"[^\w.+-]+", "-", str(value)).strip("-") or "x"
