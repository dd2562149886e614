"""Typed run configuration: frozen dataclasses built from YAML plus dotted `key=value` overrides.

Everything the user can get wrong is checked here, once, and reported as a `UserError` that
names the key (and the closest valid key when it is misspelled).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from vae.errors import UserError

MAX_CONFIG_BYTES = 1 << 20
ACTIVATIONS = ("relu", "tanh", "elu", "gelu")
LR_SCHEDULES = ("constant", "cosine", "exponential", "burda")
# data.dataset -> the names of its classes 0..9 (those of torchvision's MNIST, FashionMNIST and KMNIST)
CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
}


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise UserError(f"{key} {rule}, got {value!r}")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mnist"  # mnist | fashion_mnist | kmnist: 28x28 grey images of 10 classes, one IDX layout
    root: str = "data"  # folder that holds MNIST/raw/ (FashionMNIST/raw/, KMNIST/raw/; torchvision's layout)
    download: bool = True  # try torchvision's download when the files are missing
    binarize: str = "none"  # none | dynamic | static: Bernoulli-sampled pixels (see README)
    seed: int = 0  # seeds the binarizations of data.binarize and the choice of the validation images
    val_size: int = 0  # training images held out as a validation split (best.pt, early stopping); 0 = none

    def __post_init__(self):
        _require(self.dataset in CLASS_NAMES, "data.dataset", self.dataset, f"must be one of {', '.join(CLASS_NAMES)}")
        _require(self.binarize in ("none", "dynamic", "static"), "data.binarize", self.binarize,
                 "must be none, dynamic or static")
        _require(0 <= self.seed < 2**62, "data.seed", self.seed, "must be in 0..2**62-1")
        _require(0 <= self.val_size <= 1_000_000, "data.val_size", self.val_size, "must be in 0..1000000")


@dataclass(frozen=True)
class ModelConfig:
    hidden_dims: tuple[int, ...] = (400,)  # encoder widths; the decoder mirrors them
    latent_dim: int = 20
    activation: str = "relu"  # relu | tanh | elu | gelu, between hidden layers
    arch: str = "mlp"  # mlp | conv: the encoder and decoder networks
    channels: tuple[int, ...] = (32, 64)  # conv: channels of each stage, at 28, 14 and 7 pixels a side
    res_blocks: int = 1  # conv: residual blocks per stage
    latent2_dim: int = 0  # units of a second stochastic layer z2 above z1 (latent_dim); 0 = one layer
    hidden2_dims: tuple[int, ...] = (50, 50)  # with latent2_dim: MLP widths between z1 and z2, each way
    output_bias_init: str = "torch"  # torch | pixel_means: the decoder's last bias at logit(mean training pixel)

    def __post_init__(self):
        _require(1 <= self.latent_dim <= 4096, "model.latent_dim", self.latent_dim, "must be in 1..4096")
        _require(all(1 <= h <= 65536 for h in self.hidden_dims), "model.hidden_dims",
                 list(self.hidden_dims), "must hold sizes in 1..65536")
        _require(self.activation in ACTIVATIONS, "model.activation", self.activation,
                 f"must be one of {', '.join(ACTIVATIONS)}")
        _require(self.arch in ("mlp", "conv"), "model.arch", self.arch, "must be mlp or conv")
        _require(1 <= len(self.channels) <= 3 and all(1 <= c <= 4096 for c in self.channels), "model.channels",
                 list(self.channels), "must hold 1 to 3 sizes in 1..4096 (one stage per halving of 28 pixels)")
        _require(0 <= self.res_blocks <= 64, "model.res_blocks", self.res_blocks, "must be in 0..64")
        _require(0 <= self.latent2_dim <= 4096, "model.latent2_dim", self.latent2_dim, "must be in 0..4096")
        _require(all(1 <= h <= 65536 for h in self.hidden2_dims), "model.hidden2_dims",
                 list(self.hidden2_dims), "must hold sizes in 1..65536")
        _require(self.output_bias_init in ("torch", "pixel_means"), "model.output_bias_init", self.output_bias_init,
                 "must be torch or pixel_means")
        _require(self.output_bias_init == "torch" or self.arch == "mlp", "model.output_bias_init",
                 self.output_bias_init, "pixel_means needs model.arch=mlp (the conv decoder ends in one shared bias)")


@dataclass(frozen=True)
class LossConfig:
    beta: float = 1.0  # weight of the KL term in the training objective (1 = the ELBO)
    kl_warmup_epochs: int = 0  # the KL weight rises linearly from 0 to beta over this many epochs
    free_bits: float = 0.0  # nats per latent dim (batch mean) below which KL is not penalized; 0 = off
    iwae_k: int = 1  # importance samples of the IWAE objective; 1 = the VAE objective
    gradient: str = "standard"  # standard | dreg: DReG (STL at iwae_k=1) gradients for the encoder

    def __post_init__(self):
        _require(math.isfinite(self.beta) and 0 <= self.beta <= 1000, "loss.beta", self.beta,
                 "must be a number in [0, 1000]")
        _require(0 <= self.kl_warmup_epochs <= 1_000_000, "loss.kl_warmup_epochs", self.kl_warmup_epochs,
                 "must be in 0..1000000")
        _require(math.isfinite(self.free_bits) and 0 <= self.free_bits <= 100, "loss.free_bits",
                 self.free_bits, "must be a number in [0, 100]")
        _require(1 <= self.iwae_k <= 100_000, "loss.iwae_k", self.iwae_k, "must be in 1..100000")
        _require(self.iwae_k == 1 or (self.beta == 1 and not self.free_bits),
                 "loss.iwae_k", self.iwae_k, "> 1 is the IWAE bound, which takes no beta or free bits "
                 "(set loss.iwae_k=1 for those)")
        _require(self.gradient in ("standard", "dreg"), "loss.gradient", self.gradient, "must be standard or dreg")
        _require(self.gradient == "standard" or not self.free_bits, "loss.gradient", self.gradient,
                 "dreg takes no free bits (its rate is sampled, not the analytic per-dimension KL)")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | cosine | exponential | burda (per epoch; see README)
    lr_decay_to: float = 0.1  # cosine/exponential: the last epoch's lr as a fraction of train.lr
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    grad_clip: float = 0.0  # clip the gradient norm to this; 0 = off
    checkpoint_every_steps: int = 0  # also save last.pt every N steps inside an epoch; 0 = epoch ends only
    deterministic: bool = False  # torch's deterministic algorithms (matters on GPU)
    precision: str = "fp32"  # fp32 | bf16 | auto: bf16 autocast of the training forward pass (auto: where native)
    compile: bool = False  # torch.compile the model for training
    cuda_graph: bool = True  # on CUDA, in one process: replay each full batch's step as one CUDA graph
    patience: int = 0  # stop once the validation loss has not improved for this many epochs; 0 = never
    ema_decay: float = 0.0  # keep an average of the weights, 1 - ema_decay of the way to them a step; 0 = off
    budget_minutes: float = 0.0  # time budget: stop once the epochs' seconds reach it, lr schedule over it; 0 = none

    def __post_init__(self):
        _require(1 <= self.epochs <= 1_000_000, "train.epochs", self.epochs, "must be in 1..1000000")
        _require(1 <= self.batch_size <= 1_000_000, "train.batch_size", self.batch_size,
                 "must be in 1..1000000")
        _require(math.isfinite(self.lr) and 0 < self.lr <= 10, "train.lr", self.lr,
                 "must be a finite number in (0, 10]")
        _require(self.lr_schedule in LR_SCHEDULES, "train.lr_schedule", self.lr_schedule,
                 f"must be one of {', '.join(LR_SCHEDULES)}")
        _require(math.isfinite(self.lr_decay_to) and 0 < self.lr_decay_to <= 1, "train.lr_decay_to",
                 self.lr_decay_to, "must be a number in (0, 1]")
        _require(0 <= self.seed < 2**63, "train.seed", self.seed, "must be in 0..2**63-1")
        _require(re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None, "train.device",
                 self.device, "must be auto, cpu, cuda or cuda:N")
        _require(math.isfinite(self.grad_clip) and self.grad_clip >= 0, "train.grad_clip", self.grad_clip,
                 "must be a finite number >= 0 (0 = off)")
        _require(self.precision in ("fp32", "bf16", "auto"), "train.precision", self.precision,
                 "must be fp32, bf16 or auto")
        _require(0 <= self.patience <= 1_000_000, "train.patience", self.patience, "must be in 0..1000000 (0 = off)")
        _require(0 <= self.ema_decay < 1, "train.ema_decay", self.ema_decay, "must be a number in [0, 1) (0 = off)")
        _require(math.isfinite(self.budget_minutes) and 0 <= self.budget_minutes <= 1_000_000,
                 "train.budget_minutes", self.budget_minutes, "must be a number in [0, 1000000] (0 = no time budget)")
        _require(not self.budget_minutes or self.lr_schedule != "burda", "train.budget_minutes", self.budget_minutes,
                 "cannot time Burda's schedule, whose stages are fixed epoch counts (use cosine or exponential)")
        _require(self.checkpoint_every_steps >= 0, "train.checkpoint_every_steps",
                 self.checkpoint_every_steps, "must be >= 0 (0 = at epoch ends only)")


@dataclass(frozen=True)
class VizConfig:
    every: int = 1  # write image grids and loss curves every N epochs (and always after the last one)
    digit: int | str = 2  # the class shown in the single-class grid: its index 0..9 or name (stored as the index)

    def __post_init__(self):
        _require(self.every >= 1, "viz.every", self.every, "must be >= 1")
        _require(isinstance(self.digit, str) or 0 <= self.digit <= 9, "viz.digit", self.digit,
                 "must be a class index 0..9 or a class name")


@dataclass(frozen=True)
class EvalConfig:
    split: str = "test"  # test | val | train: the split evaluate.py measures (val needs data.val_size)
    iwae_samples: int = 5000  # k of the importance-weighted NLL bound (Burda et al. use 5000)
    seed: int = 0  # seeds every sample evaluate.py draws, so its numbers repeat

    def __post_init__(self):
        _require(self.split in ("test", "val", "train"), "eval.split", self.split, "must be test, val or train")
        _require(1 <= self.iwae_samples <= 1_000_000, "eval.iwae_samples", self.iwae_samples,
                 "must be in 1..1000000")
        _require(0 <= self.seed < 2**63, "eval.seed", self.seed, "must be in 0..2**63-1")


@dataclass(frozen=True)
class LoggingConfig:
    tensorboard: bool = False  # also log scalars and image grids to <run>/tensorboard/ (needs tensorboard)


@dataclass(frozen=True)
class OutputConfig:
    dir: str | None = None  # run directory; None means outputs/<config file name>


@dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    viz: VizConfig = VizConfig()
    eval: EvalConfig = EvalConfig()
    logging: LoggingConfig = LoggingConfig()
    output: OutputConfig = OutputConfig()

    def __post_init__(self):
        # Early stopping on the test set would leak it into training: the test number would be chosen.
        _require(not self.train.patience or self.data.val_size > 0, "train.patience", self.train.patience,
                 "needs data.val_size > 0 (a validation split to watch)")
        _require(self.eval.split != "val" or self.data.val_size > 0, "eval.split", self.eval.split,
                 "needs data.val_size > 0 (the run has no validation split)")
        _require(self.loss.gradient == "standard" or not self.model.latent2_dim, "loss.gradient", self.loss.gradient,
                 "dreg is built for one stochastic layer (set model.latent2_dim=0)")
        if isinstance(self.viz.digit, str):  # a class name: kept as its index, which is what files are named by
            names = [n.lower() for n in CLASS_NAMES[self.data.dataset]]
            _require(self.viz.digit.lower() in names, "viz.digit", self.viz.digit,
                     f"must be a class of {self.data.dataset} ({', '.join(CLASS_NAMES[self.data.dataset])}) "
                     f"or its index 0..9")
            object.__setattr__(self, "viz", dataclasses.replace(self.viz, digit=names.index(self.viz.digit.lower())))

    @property
    def class_names(self) -> tuple[str, ...]:
        return CLASS_NAMES[self.data.dataset]


def _sections() -> dict[str, type]:
    return {f.name: typing.get_type_hints(Config)[f.name] for f in dataclasses.fields(Config)}


def valid_keys() -> list[str]:
    """Every dotted key a config file or override may set, e.g. 'train.lr'."""
    return [f"{name}.{f.name}" for name, cls in _sections().items() for f in dataclasses.fields(cls)]


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
        if isinstance(value, str):  # YAML 1.1 reads `3e-4` (no dot) as a string
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
    sections = _sections()
    built = {}
    for name, values in raw.items():
        if name not in sections:
            raise _unknown(str(name), list(sections))
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise UserError(f"config section '{name}' must be a mapping, got {values!r}")
        hints = typing.get_type_hints(sections[name])
        kwargs = {}
        for key, value in values.items():
            dotted = f"{name}.{key}"
            if key not in hints:
                raise _unknown(dotted, valid_keys())
            kwargs[key] = _coerce(value, hints[key], dotted)
        built[name] = sections[name](**kwargs)
    return Config(**built)


def to_dict(cfg: Config) -> dict:
    """Nested plain data (lists, not tuples): for YAML files and checkpoints."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return list(v) if isinstance(v, tuple) else v
    return plain(dataclasses.asdict(cfg))


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors/aliases, so a small file cannot expand into a huge one."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(None, None, "YAML aliases are not allowed", mark)
        return super().compose_node(parent, index)


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


def read_config_file(path: str | Path) -> dict:
    """The raw nested dict of a YAML config file.

    An empty file is refused (a truncated or unsaved file, most likely); `{}` means all defaults.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
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
