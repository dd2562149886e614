"""train(cfg): plan the run, build it, then for each epoch run it and end it.

Read top to bottom: `_train` is the whole story in labelled steps, `run_epoch` the inner loop,
`end_epoch` what happens between epochs (evaluate, keep the best, write, print).
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from vae.cli import invoked_as
from vae.config.schema import Config, LossConfig, TrainConfig, with_classes
from vae.data.load import Splits, load_data
from vae.denormals import flushed_denormals
from vae.device import resolve_device
from vae.errors import Interrupted, UserError
from vae.evaluate.heldout import evaluate
from vae.evaluate.pictures import fixed_latents, save_pictures
from vae.evaluate.plots import plot_loss_curves
from vae.model.vae import VAE, build_model, init_output_bias
from vae.run import rundir
from vae.run.checkpoint import check_same_data, checkpoint_state, load_state, save_checkpoint
from vae.run.layout import best_pt, last_pt
from vae.run.resume import restore_rng
from vae.train.autograd_step import GraphedStep
from vae.train.averaging import WeightAverage
from vae.train.choose_step import compiled_graphs_dropped, make_step
from vae.train.distributed import World, all_reduce, process_group, world_from_environment
from vae.train.epoch_report import collapse_warning, epoch_line
from vae.train.interrupt import StopRequest
from vae.train.memory import out_of_memory_reported
from vae.train.optimizer import make_optimizer
from vae.train.plan import Plan, check_machine, claimed, plan_run
from vae.train.progress import EpochProgress
from vae.train.schedule import kl_weight, learning_rate, seconds_spent, stops_early
from vae.train.speed import choose_speed, run_length, threads_kept, timings_text
from vae.train.step import Speed, Step
from vae.train.tblog import TensorBoardLog

SYNC_EVERY = 50  # steps between reads of the loss from the device (progress bar, NaN check, stop)


@dataclass
class TrainResult:
    run_dir: Path
    rows: list[dict]  # metrics.csv, one dict per epoch
    best: dict  # {"loss", "epoch"}: best.pt's, on the validation split when there is one, else the test split
    model: VAE  # the trained weights; with train.ema_decay the evaluated average is last.pt's "average"


@dataclass
class Run:
    """A run's state between epochs: what end_epoch reads and writes."""

    cfg: Config
    world: World
    device: torch.device
    splits: Splits
    model: VAE
    opt: torch.optim.Optimizer
    gen: torch.Generator  # the training stream: batch order, binarization, noise
    rows: list[dict]
    best: dict
    clock: float  # when the time counted in the next metrics row began: the run's start, then each row's end
    speed: Speed = Speed(False, 1)  # train.precision and train.threads as they run (choose_speed's, before a step)
    average: WeightAverage | None = None  # the weights averaged over the steps (train.ema_decay)
    curves_drawn: int = 0  # the last epoch images/loss_curves.png shows
    progress: EpochProgress | None = None  # where the checkpoint stopped inside an epoch
    tensorboard: TensorBoardLog | None = None

    @property
    def evaluated(self) -> VAE:
        """The model every evaluation and picture uses: the average of the weights, when there is one."""
        return self.average.model if self.average else self.model

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.output.dir).expanduser()

    def checkpoint(self, epochs_done: int, inside: EpochProgress | None = None) -> dict:
        """This moment as a checkpoint: after `epochs_done` epochs and, with `inside`, steps into the next."""
        return checkpoint_state(self.cfg, self.splits, epoch=epochs_done, best=self.best, model=self.model,
                                optimizer=self.opt, gen=self.gen, progress=inside.state() if inside else None,
                                precision=self.speed.precision, average=self.average.state() if self.average else None)

    def draw_curves(self) -> None:
        """images/loss_curves.png of every epoch so far."""
        plot_loss_curves(self.rows, self.run_dir / "images" / "loss_curves.png")
        self.curves_drawn = self.rows[-1]["epoch"]

    def save_inside(self, epoch: int, progress: EpochProgress) -> None:
        """last.pt in the middle of `epoch` (rank 0 writes)."""
        if self.world.main:
            save_checkpoint(self.checkpoint(epoch - 1, progress), last_pt(self.run_dir))


def train(cfg: Config, resume: str | Path | None = None, overwrite: bool = False,
          argv: list[str] | None = None, after_epoch: Callable[[dict, bool], None] | None = None,
          memory_share: int = 1) -> TrainResult:
    """Train from scratch, or continue the checkpoint `resume` (a file or a run directory).

    A checkpoint continues in place when output.dir is the run directory it belongs to; anywhere
    else the run is forked into output.dir, which must not hold a run. Everything the user
    supplied is checked before anything in a run directory is written. On SIGINT/SIGTERM the
    current step finishes, last.pt is saved, and Interrupted is raised. Started by torchrun, it
    trains data-parallel over all its processes. `after_epoch` is called with each epoch's metrics
    row once its checkpoint is written, and whether it is the run's last epoch (a sweep reports it
    to its pruner, which may stop the run). `memory_share` processes (a sweep's workers) share the
    machine's free memory, so the run is checked against its share of it. Subnormal numbers are flushed to zero
    on every thread throughout (vae/denormals.py).
    """
    started = time.perf_counter()  # the time budget counts the start-up too
    world = world_from_environment()
    device = world.device(resolve_device(cfg.train.device))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # new streams and CUDA graphs are made on the current device
    # (the flush outside threads_kept: after the run, the threads it had before are the ones set back)
    with process_group(world, device), out_of_memory_reported(device), flushed_denormals(), threads_kept(), \
            compiled_graphs_dropped(cfg.train.compile):
        argv = argv if argv is not None else sys.argv  # a sweep's trial passes its own, passwords out
        return _train(cfg, resume, overwrite, argv, world, device, after_epoch, memory_share, started)


def _train(cfg: Config, resume: str | Path | None, overwrite: bool, argv: list[str], world: World,
           device: torch.device, after_epoch: Callable[[dict, bool], None] | None, memory_share: int,
           started: float) -> TrainResult:
    # 1. Plan: what the run continues, and every check that can fail before a file is written.
    plan = plan_run(cfg, resume, overwrite, device)
    for warning in plan.warnings:
        log(world, warning, file=sys.stderr)
    # 2. Data, read (or downloaded) by rank 0 first; then whether the machine holds a run on it.
    splits = load_splits(cfg, world, device)
    cfg = with_classes(cfg, splits.classes)
    images = sum(len(s) for s in (splits.train, splits.val, splits.test) if s is not None)
    check_machine(cfg, plan.run_dir, device, splits.shape, images, memory_share)
    # 3. Build: the seeded model, optimizer and training stream, restored from the checkpoint.
    run = build(cfg, plan, splits, world, device, started)
    if plan.nothing_to_do:
        log(world, plan.nothing_to_do)
        return TrainResult(run.run_dir, run.rows, run.best, run.model)
    # 4. Speed: train.precision, train.threads and train.compile set, `auto` timed with the step on this machine.
    left = run_length(cfg, len(splits.train), plan.start, run.progress.step if run.progress else 0,
                      seconds_spent(run.rows))
    run.speed = choose_speed(cfg, run.model, splits, world, device, plan.state, left)
    step = make_step(cfg, run.model, run.opt, splits, world, device, run.speed)
    # 5. Train in the run directory, held by this run alone.
    with claimed(plan, cfg, argv, device, world, run.speed), StopRequest() as stop, curves_brought_up_to_date(run):
        run.tensorboard = TensorBoardLog(run.run_dir / "tensorboard", plan.start) \
            if cfg.logging.tensorboard and world.main else None
        log(world, start_line(run, plan, step))
        for epoch in range(plan.start, cfg.train.epochs + 1):
            progress = run.progress or EpochProgress.begin(len(splits.train), run.gen)
            run.progress = None
            for group in run.opt.param_groups:
                group["lr"] = learning_rate(cfg.train, epoch, seconds_spent(run.rows))
            if run_epoch(step, progress, run.gen, cfg.loss, epoch, cfg.train, world, stop,
                         save=partial(run.save_inside, epoch), average=run.average, since=run.clock):
                raise stopped(stop, f"in epoch {epoch} after step {progress.step}", run.run_dir, world)
            early_stop = end_epoch(run, epoch, progress)
            if after_epoch:
                after_epoch(run.rows[-1], bool(early_stop) or epoch == cfg.train.epochs)
            if early_stop:
                log(world, f"early stop after epoch {epoch}: {early_stop}; best.pt holds epoch {run.best['epoch']}")
                break
            if world.any(bool(stop.signum), device) and epoch < cfg.train.epochs:
                raise stopped(stop, f"after epoch {epoch}", run.run_dir, world)
    if run.tensorboard:
        run.tensorboard.close()
    return TrainResult(run.run_dir, run.rows, run.best, run.model)


def load_splits(cfg: Config, world: World, device: torch.device) -> Splits:
    """The data on the training device; rank 0 reads (or downloads) it before the others."""
    if not world.main:
        world.barrier()
    splits = load_data(cfg.data, device)
    if world.main:
        world.barrier()
    return splits


def build(cfg: Config, plan: Plan, splits: Splits, world: World, device: torch.device, started: float) -> Run:
    """Seed, then the model, Adam and the training stream; a checkpoint's state loaded into them."""
    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs for it
    torch.use_deterministic_algorithms(cfg.train.deterministic)
    torch.manual_seed(cfg.train.seed)
    if plan.state is not None:
        check_same_data(plan.state, splits, plan.resume)
    model = build_model(cfg.model, splits.shape).to(device)
    if cfg.model.output_bias_init == "pixel_means":  # a checkpoint's weights replace it on resume
        init_output_bias(model, splits.train.images.float().mean(0).flatten() / 255)
    opt = make_optimizer(model, cfg.train)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
    run = Run(cfg, world, device, splits, model, opt, gen, list(plan.rows), plan.best, started,
              average=WeightAverage(model, cfg.train.ema_decay) if cfg.train.ema_decay else None)
    if plan.state is not None:
        load_state(model, plan.state["model"], plan.resume)
        load_state(opt, plan.state["optimizer"], plan.resume)
        if run.average:
            load_state(run.average.model, plan.state["average"]["model"], plan.resume)
            run.average.updates = plan.state["average"]["updates"]
        restore_rng(plan.state["rng"], gen)
        if plan.state["progress"] is not None:  # stopped inside epoch plan.start
            run.progress = EpochProgress.from_state(plan.state["progress"], device)
    return run


def run_epoch(step: Step, progress: EpochProgress, gen: torch.Generator, loss: LossConfig, epoch: int,
              train_cfg: TrainConfig, world: World = World(), stop: StopRequest | None = None,
              save: Callable[[EpochProgress], object] = lambda progress: None,
              average: WeightAverage | None = None, since: float | None = None) -> bool:
    """Train the batches of `epoch` that `progress` has left, one step each, each step followed by an
    update of the weights' `average` when there is one.

    Every SYNC_EVERY steps (and before a save) the processes merge their sums, check them and agree
    on a stop; a stop, or every train.checkpoint_every_steps steps, saves the epoch so far. Returns
    whether it stopped inside the epoch (after saving). The epoch's clock runs from `since` (default: now).
    """
    n_batches, every = progress.batches(train_cfg.batch_size), train_cfg.checkpoint_every_steps
    t0 = time.perf_counter() if since is None else since
    with tqdm(total=n_batches, initial=progress.step, desc=f"epoch {epoch}/{train_cfg.epochs}", leave=False,
              disable=None if world.main else True, unit="batch") as bar:
        for idx in progress.remaining(train_cfg.batch_size):
            step(idx, gen, kl_weight(loss, epoch, progress.step, n_batches), progress)
            if average:
                average.update()
            bar.update()
            signalled = bool(stop and stop.signum)
            save_due = progress.step < n_batches and (
                bool(every) and progress.step % every == 0 or world.size == 1 and signalled)
            if progress.step % SYNC_EVERY and not save_due:
                continue
            # Sync: under torchrun the processes agree on a stop here only, at the same step.
            stopping = sync(progress, epoch, world, signalled)
            bar.set_postfix(loss=f"{progress.means()['loss']:.2f}")
            if progress.step < n_batches and (stopping or save_due):
                progress.seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                save(progress)
                if stopping:
                    return True
    sync(progress, epoch, world, False)
    progress.seconds += time.perf_counter() - t0
    return False


def sync(progress: EpochProgress, epoch: int, world: World, stop_requested: bool) -> bool:
    """Merge every process's sums, stop on a non-finite step, and agree on a stop (a collective)."""
    progress.merge()
    progress.check_finite(epoch)
    return world.any(stop_requested, progress.sums.device)


def end_epoch(run: Run, epoch: int, progress: EpochProgress) -> str:
    """Evaluate, keep the best, write the epoch's files and checkpoint, print its line.

    Returns why training stops early ('' when it goes on).
    """
    cfg, world = run.cfg, run.world
    # Evaluate, on every rank: all take the same branches.
    t0 = time.perf_counter()
    val = evaluate(run.evaluated, run.splits.val, cfg.train.seed) if run.splits.val is not None else {}
    test = evaluate(run.evaluated, run.splits.test, cfg.train.seed)
    if not math.isfinite(test["loss"]):  # the last step's update broke the weights
        raise UserError(f"training diverged at the end of epoch {epoch}: the test loss is not "
                        f"finite. The last checkpoint is kept; lower train.lr or set train.grad_clip")
    # The epoch's wall time, from the end of the last row's (so the writes after it and the start-up count too);
    # the slowest process's, so that under torchrun all follow one time budget (train.budget_minutes).
    run.clock = time.perf_counter()
    seconds = all_reduce(torch.tensor(progress.seconds + run.clock - t0, dtype=torch.float64, device=run.device),
                         "max")
    run.rows.append({"epoch": epoch, **{f"train_{k}": v for k, v in progress.means().items()},
                     **{f"val_{k}": v for k, v in val.items() if k in ("loss", "recon", "kl")},
                     **{f"test_{k}": v for k, v in test.items()},
                     "seconds": seconds.item()})
    # Best and early stop: chosen on the validation split, on the test split only without one.
    is_best = (val or test)["loss"] < run.best["loss"]
    if is_best:
        run.best = {"loss": (val or test)["loss"], "epoch": epoch}
    early_stop = stops_early(cfg.train, run.best, epoch, run.rows) if epoch < cfg.train.epochs else ""
    if world.any(bool(early_stop), run.device):  # under torchrun, all processes stop together
        early_stop = early_stop or "another process's validation loss stopped improving"
    if world.main:
        # Write: metrics, pictures and TensorBoard; then best.pt and last.pt, the same moment, last
        # (a crash before them redoes the epoch, which rewrites the same files).
        write_epoch(run, final=bool(early_stop))
        last, best = last_pt(run.run_dir), best_pt(run.run_dir)
        save_checkpoint(run.checkpoint(epoch), *([best] if is_best else []), last)
        spent = seconds_spent(run.rows)
        budget = f"  {spent / 60:.1f}/{cfg.train.budget_minutes:g} min" if cfg.train.budget_minutes else ""
        print(epoch_line(run.rows[-1], cfg.train.epochs, is_best) + budget, flush=True)  # also when piped to a log
        warning = collapse_warning(run.rows, iwae=cfg.loss.iwae_k > 1)
        if warning:
            print(warning, file=sys.stderr)
    return early_stop


def write_epoch(run: Run, final: bool) -> None:
    """metrics.csv; the pictures every viz.every epochs, the loss curves every viz.curves_every, and both after the
    `final` epoch (or train.epochs)."""
    cfg, rows = run.cfg, run.rows
    epoch = rows[-1]["epoch"]
    last = epoch == cfg.train.epochs or final
    rundir.write_metrics(run.run_dir, rows)
    pictures = []
    if epoch % cfg.viz.every == 0 or last:
        fixed_z = fixed_latents(run.model.prior_noise_dim, cfg.train.seed, run.device)
        pictures = save_pictures(run.evaluated, run.splits.test, fixed_z, cfg.viz.digit, run.run_dir / "images",
                                 suffix=f"_epoch{epoch:03d}")
    if epoch % cfg.viz.curves_every == 0 or last:
        run.draw_curves()
    if run.tensorboard:
        run.tensorboard.epoch(rows[-1], pictures)


@contextlib.contextmanager
def curves_brought_up_to_date(run: Run) -> Iterator[None]:
    """The loss curves drawn to the last epoch also when the run stops between viz.curves_every epochs (a signal, a
    sweep's pruning, an error)."""
    try:
        yield
    finally:
        if run.world.main and run.rows and run.curves_drawn < run.rows[-1]["epoch"]:
            with contextlib.suppress(Exception):  # a picture's failure must not hide why the run stopped
                run.draw_curves()


def start_line(run: Run, plan: Plan, step: Step) -> str:
    n_params = sum(p.numel() for p in run.model.parameters())
    at = f" (epoch {plan.start} from step {run.progress.step})" if run.progress else ""
    how = (f" x {run.world.size} processes" if run.world.size > 1 else
           " (steps replayed as a CUDA graph)" if isinstance(step, GraphedStep) else "")
    how += " under bf16 autocast" if run.speed.bf16 else ""
    how += ", compiled" if run.speed.compiled else ""
    how += f" on {run.speed.threads} thread{'s' * (run.speed.threads > 1)}" if run.device.type == "cpu" else ""
    if run.speed.ms_per_step:
        how += f" (timed: {timings_text(run.speed.ms_per_step)}"
        if run.speed.compile_seconds is not None:  # timed: the run was long enough that compiling might pay
            pays = "" if run.speed.compiled else ", more than it saves over this run"
            how += f"; compiling took {run.speed.compile_seconds:.1f} s{pays}"
        how += ")"
    budget = f" or {run.cfg.train.budget_minutes:g} minutes in all" if run.cfg.train.budget_minutes else ""
    average = f", averaging the weights (decay {run.cfg.train.ema_decay:g})" if run.average else ""
    return (f"training {n_params:,} parameters on {run.device}{how}, epochs {plan.start}..{run.cfg.train.epochs}"
            f"{budget}{at}{average}, writing to {run.run_dir}")


def stopped(stop: StopRequest, where: str, run_dir: Path, world: World) -> Interrupted:
    """The stop on a signal (under torchrun, another process's), saying how to continue."""
    launcher = invoked_as("train")
    if world.size > 1:  # torchrun runs a script, a module, or (--no-python) an installed command
        launcher = f"torchrun --nproc_per_node {world.size} " + {
            "vae-train": "--no-python vae-train", "python -m vae train": "-m vae train"}.get(launcher, "train.py")
    return Interrupted(stop.signum or signal.SIGTERM, f"stopped {where}; continue with: {launcher} --resume {run_dir}")


def log(world: World, message: str, file=None) -> None:
    """Print on rank 0 only."""
    if world.main:
        print(message, file=file or sys.stdout, flush=True)
