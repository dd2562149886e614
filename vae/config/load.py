"""From YAML files and dotted `section.key=value` overrides to a validated Config, and back to plain data.

Everything the user can get wrong in a file or an override is checked here, once, and reported as
a `UserError` that names the key (and the closest valid key when it is misspelled).
"""
from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from vae.config.schema import Config, OutputConfig, sections, valid_keys
from vae.errors import UserError

MAX_CONFIG_BYTES = 1 << 20


def _unknown(key: str, candidates: list[str]) -> UserError:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else f"; valid keys: {', '.join(candidates)}"
    return UserError(f"unknown config key '{key}'{hint}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotated type `tp`, converting only where YAML is ambiguous."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # `X | None`, `int | str`: the first that takes the value
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for tp in inner:
            try:
                return _coerce(value, tp, key)
            except UserError:
                if len(inner) == 1:
                    raise
        raise UserError(f"{key} must be {' or '.join(t.__name__ for t in inner)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # a quoted number, or nan and inf (which the validators then name)
            try:
                return float(value)
            except ValueError:
                pass
    if tp is str and isinstance(value, str):
        return value
    if tp is str and isinstance(value, int) and not isinstance(value, bool):  # e.g. output.dir=2024
        return str(value)
    raise UserError(f"{key} must be {getattr(tp, '__name__', tp)}, got {value!r}")


def from_dict(raw: dict) -> Config:
    """Build a validated Config from nested plain data (missing keys take their defaults)."""
    if not isinstance(raw, dict):
        raise UserError(f"a config must be a mapping of sections, got {type(raw).__name__}")
    known = sections()
    built = {}
    for name, values in raw.items():
        if name not in known:
            raise _unknown(str(name), list(known))
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise UserError(f"config section '{name}' must be a mapping, got {values!r}")
        hints = typing.get_type_hints(known[name])
        kwargs = {}
        for key, value in values.items():
            dotted = f"{name}.{key}"
            if key not in hints:
                raise _unknown(dotted, valid_keys())
            kwargs[key] = _coerce(value, hints[key], dotted)
        built[name] = known[name](**kwargs)
    return Config(**built)


def to_dict(cfg: Config) -> dict:
    """Nested plain data (lists, not tuples): for YAML files and checkpoints."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return list(v) if isinstance(v, tuple) else v
    return plain(dataclasses.asdict(cfg))


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML, sections and keys in their declared order: config.yaml and --print-config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases, so a small file cannot expand into a huge one, and reads
    `3e-4` as a number, as YAML 1.2 does (YAML 1.1 wants a dot: `3.0e-4`)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "YAML aliases are not allowed", mark)
        return super().compose_node(parent, index)


_NoAliasLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                     list("-+0123456789"))


def parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except RecursionError:
        raise UserError(f"{source} is nested too deeply to be a config") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{source} is not valid YAML: {problem}{where}") from None


def shipped_configs() -> dict[str, Path]:
    """The configs this project ships, by name: configs/ of a checkout, or vae/configs/ where pip installed them."""
    package = Path(__file__).resolve().parent.parent
    for folder in (package / "configs", package.parent / "configs"):
        if (folder / "mnist.yaml").is_file():
            return {p.stem: p for p in sorted(folder.glob("*.yaml"))}
    return {}


def config_file(path: str | Path) -> Path:
    """A config file, or the name of a shipped one (`mnist`, `mnist_cpu_hour.yaml`) where no such file is here:
    `--config mnist` takes ./mnist.yaml when there is one."""
    path = Path(path)
    for here in (path, path.with_name(path.name + ".yaml")) if path.name and not path.suffix else (path,):
        if here.is_file():
            return here
    shipped = shipped_configs()
    if path.parent == Path(".") and path.suffix in ("", ".yaml") and path.stem in shipped:
        return shipped[path.stem]
    raise UserError(f"config file not found: {path} (the shipped configs, by name: {', '.join(shipped)})")


def read_config_file(path: str | Path) -> dict:
    """The raw nested dict of a YAML config file (or a shipped config, by name).

    An empty file is refused (a truncated or unsaved file, most likely); `{}` means all defaults.
    """
    path = config_file(path)
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise UserError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes: not a config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a text (UTF-8) file") from None
    raw = parse_yaml(text, str(path))
    if raw is None:
        raise UserError(f"{path} is empty; write {{}} for a config that keeps every default")
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a mapping of sections (data, model, train, ...)")
    return raw


def check_key(key: str) -> None:
    """Refuse a dotted key that no config has, naming the closest one."""
    keys = valid_keys()
    if key not in keys:
        raise _unknown(key, keys)


def split_override(item: str) -> tuple[str, str]:
    """'train.lr = 3e-4' -> ('train.lr', ' 3e-4')."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override '{item}' must look like section.key=value, e.g. train.lr=3e-4")
    return key.strip(), text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Return a copy of `raw` with `section.key=value` overrides applied (values parsed as YAML)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for item in overrides:
        key, text = split_override(item)
        check_key(key)
        section, name = key.split(".")
        if not isinstance(out.get(section), dict):
            out[section] = {}
        out[section][name] = parse_yaml(text, f"override '{item}'")
    return out


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict | None = None) -> Config:
    """Defaults <- YAML file (or `base`, e.g. a checkpoint's stored config) <- overrides, validated.

    When no output directory is given, runs go to outputs/<config file name>.
    """
    raw = read_config_file(path) if path is not None else (base or {})
    cfg = from_dict(apply_overrides(raw, list(overrides)))
    if cfg.output.dir is None:
        stem = Path(path).stem if path is not None else "run"
        cfg = dataclasses.replace(cfg, output=OutputConfig(dir=f"outputs/{stem}"))
    return cfg
