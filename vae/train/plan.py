"""Plan a run before anything is written: what it continues, where it writes, what could stop it."""
from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from vae.config.schema import CLASS_NAMES, Config, resolve_classes
from vae.data.split import MNIST_SHAPE
from vae.device import native_bf16
from vae.errors import UserError
from vae.evaluate.tensorboard import summary_writer_class
from vae.model.vae import build_model
from vae.run import rundir
from vae.run.checkpoint import load_checkpoint, resolve_checkpoint, run_dir_of
from vae.run.resume import carry_best, check_same_run, last_position, position
from vae.train.distributed import World
from vae.train.memory import check_memory
from vae.train.schedule import stops_early
from vae.train.speed import cxx_compiler
from vae.train.step import Speed

IMAGE_BYTES_PER_EPOCH = 300_000  # the pictures of an epoch, at MNIST's size


@dataclass(frozen=True)
class Plan:
    run_dir: Path
    overwrite: bool
    resume: Path | None = None  # the checkpoint continued
    state: dict | None = None  # its contents
    source: Path | None = None  # the run directory it belongs to
    rows: tuple[dict, ...] = ()  # metrics rows kept: those before the first epoch to train
    nothing_to_do: str = ""  # why no epoch is left to train
    warnings: tuple[str, ...] = ()

    @property
    def in_place(self) -> bool:
        """Whether the run continues in the directory of the checkpoint (else it is new or a fork)."""
        return self.source is not None and self.run_dir.resolve() == self.source

    @property
    def start(self) -> int:
        """The first epoch to train (the checkpoint's own when it stopped inside it)."""
        return 1 if self.state is None else self.state["epoch"] + 1

    @property
    def best(self) -> dict:
        return {"loss": math.inf, "epoch": None} if self.state is None else self.state["best"]


def plan_run(cfg: Config, resume: str | Path | None, overwrite: bool, device: torch.device) -> Plan:
    """What the run continues, checked against where it writes and the tools it needs (check_machine, once the
    data is read, checks the disk and the memory)."""
    check_tools(cfg)
    plan = Plan(Path(cfg.output.dir).expanduser(), overwrite)
    if resume is not None:
        resume = resolve_checkpoint(resume)
        state, stored = load_checkpoint(resume)
        check_same_run(stored, resolved_classes(cfg, state))
        source = run_dir_of(resume)
        start = state["epoch"] + 1  # rows from there on belong to work that is about to be redone
        rows = tuple(r for r in rundir.read_metrics(source) if r["epoch"] < start) if source else ()
        plan = Plan(plan.run_dir, overwrite, resume, state, source, rows, nothing_to_do(cfg, resume, state, rows))
    check_target(plan)
    return dataclasses.replace(plan, warnings=tuple(w for w in [bf16_warning(cfg, device)] if w))


def resolved_classes(cfg: Config, state: dict) -> Config:
    """cfg with data.classes as the indices the checkpoint stores: your own images' class names are resolved only
    once the data is read, and the checkpoint knows the classes it read."""
    if not cfg.data.classes or cfg.data.dataset in CLASS_NAMES:  # the MNIST-class datasets' are resolved already
        return cfg
    data, _ = resolve_classes(cfg.data, cfg.viz, tuple(state["data"]["classes"]))
    return dataclasses.replace(cfg, data=data)


def nothing_to_do(cfg: Config, resume: Path, state: dict, rows: tuple[dict, ...]) -> str:
    """Why a checkpoint has nothing left to train ('' when it has)."""
    if state["epoch"] >= cfg.train.epochs:
        return (f"{resume} is already at epoch {state['epoch']} of train.epochs={cfg.train.epochs}: "
                f"nothing to do (raise train.epochs to train on)")
    stopped = stops_early(cfg.train, state["best"], state["epoch"], list(rows)) \
        if state["progress"] is None else ""
    if stopped:
        return (f"{resume} (epoch {state['epoch']}) stopped early: {stopped}; nothing to do (raise the key it "
                f"names, or set it to 0, to train on)")
    return ""


def check_target(plan: Plan) -> None:
    """A new run or a fork never lands on a run; continuing in place never discards later epochs."""
    if not plan.in_place:
        rundir.check_fresh(plan.run_dir, plan.overwrite)
    elif not plan.overwrite and last_position(plan.run_dir) > position(plan.state):
        raise UserError(f"{plan.run_dir} has trained to epoch {last_position(plan.run_dir)[0]}: continuing it "
                        f"from {plan.resume.name} (epoch {plan.state['epoch']}) would discard the later work. "
                        f"Fork it with output.dir=DIR, or pass --overwrite to discard it")


def check_tools(cfg: Config) -> None:
    """What the config asks for beyond torch: TensorBoard's writer, a C++ compiler for torch.compile."""
    if cfg.logging.tensorboard:
        summary_writer_class()
    if cfg.train.compile is True and not cxx_compiler():  # `auto` then times the uncompiled steps only
        raise UserError("train.compile=true needs a C++ compiler to build torch.compile's kernels, and none was "
                        "found ($CXX, g++, clang++, c++): install one, or set train.compile=false or auto")


def check_machine(cfg: Config, run_dir: Path, device: torch.device, shape: tuple[int, int, int], images: int,
                  memory_share: int = 1) -> None:
    """Disk and memory for a run on `images` of `shape` (C, H, W); its free memory shared by `memory_share`
    processes."""
    with torch.device("meta"):  # sizes only: no memory, no random numbers
        n_params = sum(p.numel() for p in build_model(cfg.model, shape).parameters())
    # last.pt, best.pt and a temp file (weights, Adam's two moments and the average, if kept), plus the
    # images of every viz.every-th epoch
    copies = 3 + bool(cfg.train.ema_decay)
    per_epoch = IMAGE_BYTES_PER_EPOCH * math.prod(shape) // math.prod(MNIST_SHAPE)
    pictures = (cfg.train.epochs // cfg.viz.every + 1) * per_epoch
    rundir.check_space(run_dir, 3 * copies * 4 * n_params + pictures + 10 * 2**20)
    check_memory(cfg, shape, images, device, memory_share)


def bf16_warning(cfg: Config, device: torch.device) -> str:
    """A warning when bf16 is asked of a CPU that only emulates it ('' otherwise)."""
    if cfg.train.precision == "bf16" and device.type == "cpu" and not native_bf16(device):
        return ("warning: this CPU has no AVX512-BF16, so bf16 matrix products are emulated and much slower "
                "than fp32; train.precision=fp32 is the faster choice here")
    return ""


@contextmanager
def claimed(plan: Plan, cfg: Config, argv: list[str], device: torch.device, world: World, speed: Speed):
    """Hold the run directory (rank 0) for the block, checked again under the lock and made ready:
    emptied on --overwrite, best.pt carried over, run.json (with the precision and threads that run), config.yaml
    and the kept metrics rows."""
    if not world.main:
        yield
        return
    with rundir.locked(plan.run_dir):
        check_target(plan)  # again: another training may have written here since the plan was made
        rundir.create(plan.run_dir, clear=plan.overwrite and not plan.in_place)
        if plan.state is not None:
            carry_best(plan.source, plan.run_dir, plan.state["epoch"])
        rundir.write_run_info(plan.run_dir, cfg, argv, device, world.size, speed.precision, speed.threads,
                              speed.compiled, speed.ms_per_step)
        rundir.write_metrics(plan.run_dir, list(plan.rows))
        yield
