"""train(cfg): the training loop, top to bottom, with checkpoints, metrics and pictures each epoch."""
from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from vae import rundir
from vae.checkpoint import (FORMAT_VERSION, load_checkpoint, load_state, resolve_checkpoint, run_dir_of,
                            save_checkpoint)
from vae.config import Config, TrainConfig, check_same_run, to_dict
from vae.data import Split, load_data
from vae.device import resolve_device
from vae.distributed import World, process_group, world_from_environment
from vae.diagnostics import collapse_warning
from vae.errors import Interrupted, UserError
from vae.evaluation import evaluate, fixed_latents, save_pictures
from vae.interrupt import StopRequest
from vae.loss import kl_weight
from vae.model import VAE, build_model
from vae.resume import EpochProgress, carry_best, last_position, position, restore_rng, rng_state
from vae.step import GraphedStep, draw_batch, train_step
from vae.tblog import TensorBoardLog, summary_writer_class
from vae.viz import plot_loss_curves

SYNC_EVERY = 50  # steps between reads of the loss from the device (progress bar, NaN check)


@dataclass
class TrainResult:
    run_dir: Path
    rows: list[dict]  # metrics.csv, one dict per epoch
    best: dict  # {"loss", "epoch"}: best.pt's, on the validation split when there is one, else the test split
    model: VAE


def learning_rate(cfg: TrainConfig, epoch: int) -> float:
    """The learning rate of `epoch` (counted from 1) under train.lr_schedule."""
    t = (epoch - 1) / max(cfg.epochs - 1, 1)  # 0 in the first epoch, 1 in the last
    if cfg.lr_schedule == "cosine":
        return cfg.lr * (cfg.lr_decay_to + (1 - cfg.lr_decay_to) * 0.5 * (1 + math.cos(math.pi * t)))
    if cfg.lr_schedule == "exponential":
        return cfg.lr * cfg.lr_decay_to ** t
    if cfg.lr_schedule == "burda":
        # Burda et al. (2015): stage i = 0..7 is 3^i epochs at lr * 10^(-i/7), 3280 epochs in all
        stage = 0
        while stage < 7 and epoch > (3 ** (stage + 1) - 1) // 2:
            stage += 1
        return cfg.lr * 10 ** (-stage / 7)
    return cfg.lr


def train(cfg: Config, resume: str | Path | None = None, overwrite: bool = False,
          argv: list[str] | None = None) -> TrainResult:
    """Train from scratch, or continue the checkpoint `resume` (a file or a run directory).

    A checkpoint continues in place when output.dir is the run directory it belongs to; anywhere
    else the run is forked into output.dir, which must not hold a run. Everything the user
    supplied is checked before anything in a run directory is written. On SIGINT/SIGTERM the
    current step finishes, last.pt is saved, and Interrupted is raised. Started by torchrun, it
    trains data-parallel over all its processes.
    """
    world = world_from_environment()
    device = world.device(resolve_device(cfg.train.device))
    if device.type == "cuda":
        torch.cuda.set_device(device)  # new streams and CUDA graphs are made on the current device
    with process_group(world, device):
        return _train(cfg, resume, overwrite, argv, world, device)


def _train(cfg: Config, resume: str | Path | None, overwrite: bool, argv: list[str] | None, world: World,
           device: torch.device) -> TrainResult:
    if cfg.logging.tensorboard:
        summary_writer_class()  # fail now, not after the data has loaded
    run_dir = Path(cfg.output.dir).expanduser()
    state, source = None, None
    if resume is not None:
        resume = resolve_checkpoint(resume)
        state, stored = load_checkpoint(resume)
        check_same_run(stored, cfg)
        source = run_dir_of(resume)
    in_place = source is not None and run_dir.resolve() == source
    if not in_place:
        rundir.check_fresh(run_dir, overwrite)
    elif not overwrite and last_position(run_dir) > position(state):
        raise UserError(f"{run_dir} has trained to epoch {last_position(run_dir)[0]}: continuing it from "
                        f"{resume.name} (epoch {state['epoch']}) would discard the later work. Fork it "
                        f"with output.dir=DIR, or pass --overwrite to discard it")
    with torch.device("meta"):  # sizes only: no memory, no random numbers
        n_params = sum(p.numel() for p in build_model(cfg.model).parameters())
    # last.pt, best.pt and a temp file (weights + Adam's two moments), plus ~0.3 MiB of images an epoch
    rundir.check_space(run_dir, 3 * 3 * 4 * n_params + cfg.train.epochs * 300_000 + 10 * 2**20)
    if cfg.train.precision == "bf16" and device.type == "cpu" and not torch.cpu._is_avx512_bf16_supported():
        log(world, "warning: this CPU has no AVX512-BF16, so bf16 matrix products are emulated and much "
                   "slower than fp32; train.precision=fp32 is the faster choice here", file=sys.stderr)
    if cfg.train.compile and not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "clang++", "c++") if c):
        raise UserError("train.compile=true needs a C++ compiler to build torch.compile's kernels, and none "
                        "was found ($CXX, g++, clang++, c++): install one, or set train.compile=false")
    if not world.main:
        world.barrier()  # rank 0 loads (or downloads) the data first
    train_split, val_split, test_split = load_data(cfg.data, device)
    if world.main:
        world.barrier()

    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs for it
    torch.use_deterministic_algorithms(cfg.train.deterministic)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, fused=True)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
    start, rows, progress = 1, [], None
    if state is not None:
        load_state(model, state["model"], resume)
        load_state(opt, state["optimizer"], resume)
        restore_rng(state["rng"], gen)
        start = state["epoch"] + 1
        if state["progress"] is not None:  # stopped inside epoch `start`
            progress = EpochProgress.from_state(state["progress"], device)
        # Rows after the checkpoint's epoch belong to work that is about to be redone.
        rows = [r for r in rundir.read_metrics(source) if r["epoch"] < start] if source else []
    if start > cfg.train.epochs:
        log(world, f"{resume} is already at epoch {start - 1} of train.epochs={cfg.train.epochs}: "
                   f"nothing to do (raise train.epochs to train on)")
        return TrainResult(run_dir, rows, state["best"], model)
    stopped = stops_early(cfg, state["best"], start - 1) if state is not None and progress is None else ""
    if stopped:
        log(world, f"{resume} (epoch {start - 1}) has used up its patience: {stopped}; nothing to do "
                   f"(raise train.patience, or set it to 0, to train on)")
        return TrainResult(run_dir, rows, state["best"], model)
    # What takes the training steps: the model, wrapped for gradient averaging and/or compiled.
    net = model
    if world.size > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    net = torch.compile(net) if cfg.train.compile else net
    graphed = None
    if cfg.train.cuda_graph and device.type == "cuda" and world.size == 1:
        graphed = GraphedStep(net, opt, train_split, cfg, model.noise_dim, device)

    best = {"loss": math.inf, "epoch": None} if state is None else state["best"]
    if world.main:
        rundir.create(run_dir, clear=overwrite and not in_place)
        if state is not None:
            carry_best(source, run_dir, state["epoch"])
        rundir.write_run_info(run_dir, cfg, argv or sys.argv, device, world.size)
        rundir.write_metrics(run_dir, rows)
    tensorboard = TensorBoardLog(run_dir / "tensorboard", start) if cfg.logging.tensorboard and world.main else None
    fixed_z = fixed_latents(model.noise_dim, cfg.train.seed, device)
    last, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    every = cfg.train.checkpoint_every_steps
    n_batches = math.ceil(len(train_split) / cfg.train.batch_size)

    def checkpoint(epochs_done: int, inside: EpochProgress | None = None) -> dict:
        return {"format_version": FORMAT_VERSION, "config": to_dict(cfg), "epoch": epochs_done,
                "best": best, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "rng": rng_state(gen), "progress": inside.state() if inside else None}

    resuming_at = f" (epoch {start} from step {progress.step})" if progress else ""
    processes = f" x {world.size} processes" if world.size > 1 else " (steps replayed as a CUDA graph)" if graphed else ""
    log(world, f"training {n_params:,} parameters on {device}{processes}, epochs {start}..{cfg.train.epochs}"
               f"{resuming_at}, writing to {run_dir}")
    with StopRequest() as stop:
        for epoch in range(start, cfg.train.epochs + 1):
            progress = progress or EpochProgress.begin(len(train_split), gen)
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg.train, epoch)
            model.train()
            t0 = time.perf_counter()
            with tqdm(total=n_batches, initial=progress.step, desc=f"epoch {epoch}/{cfg.train.epochs}",
                      leave=False, disable=None if world.main else True, unit="batch") as bar:
                for idx in progress.remaining(cfg.train.batch_size):
                    weight = kl_weight(cfg.loss, epoch, progress.step, n_batches)
                    if graphed and graphed.fits(idx):
                        graphed(idx, gen, weight, progress)
                    else:
                        # The whole batch's draws, so that every rank follows one random stream.
                        x, eps = draw_batch(train_split, idx, gen, cfg, model.noise_dim)
                        train_step(net, opt, world.shard(x), world.shard(eps).transpose(0, 1), progress, cfg, weight,
                                   len(idx), world.size)
                    bar.update()
                    # Under torchrun the ranks agree on a stop at the sync steps only.
                    stopping = stop.signum if world.size == 1 else False
                    if progress.step % SYNC_EVERY == 0:
                        progress.merge()
                        progress.check_finite(epoch)
                        bar.set_postfix(loss=f"{progress.means()['loss']:.2f}")
                        stopping = world.any(bool(stop.signum), device)
                    if progress.step < n_batches and (stopping or every and progress.step % every == 0):
                        progress.merge()
                        progress.check_finite(epoch)
                        progress.seconds += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        if world.main:
                            save_checkpoint(checkpoint(epoch - 1, progress), last)
                        if stopping:
                            raise Interrupted(stop.signum or signal.SIGTERM,
                                              f"stopped in epoch {epoch} after step {progress.step}; "
                                              f"continue with: {resume_command(run_dir, world)}")
            progress.merge()
            progress.check_finite(epoch)
            train_nats = progress.means()
            # on every rank: all take the same branches
            val_nats = evaluate(model, val_split, cfg.train.seed) if val_split is not None else {}
            test_nats = evaluate(model, test_split, cfg.train.seed)
            if not math.isfinite(test_nats["loss"]):  # the last step's update broke the weights
                raise UserError(f"training diverged at the end of epoch {epoch}: the test loss is not "
                                f"finite. The last checkpoint is kept; lower train.lr or set train.grad_clip")
            seconds = progress.seconds + time.perf_counter() - t0
            progress = None
            chosen_on = val_nats or test_nats  # the test split only when there is no validation split
            is_best = chosen_on["loss"] < best["loss"]
            if is_best:
                best = {"loss": chosen_on["loss"], "epoch": epoch}
            early_stop = stops_early(cfg, best, epoch) if epoch < cfg.train.epochs else ""
            if world.any(bool(early_stop), device):  # under torchrun, all processes stop together
                early_stop = early_stop or "another process's validation loss stopped improving"
            rows.append({"epoch": epoch, **{f"train_{k}": v for k, v in train_nats.items()},
                         **{f"val_{k}": v for k, v in val_nats.items() if k in ("loss", "recon", "kl")},
                         **{f"test_{k}": v for k, v in test_nats.items()}, "seconds": seconds})
            if world.main:
                write_epoch(cfg, model, test_split, fixed_z, run_dir, rows, tensorboard, final=bool(early_stop))
                # best.pt is the same moment as last.pt (weights, optimizer and RNG together), written
                # first: a crash between the two leaves last.pt behind, and the resumed epoch redoes it.
                save_checkpoint(checkpoint(epoch), *([best_path] if is_best else []), last)
                print(f"epoch {epoch:3d}/{cfg.train.epochs}  train {train_nats['loss']:8.3f}  "
                      + (f"val {val_nats['loss']:8.3f}  " if val_nats else "") +
                      f"test {test_nats['loss']:8.3f} (recon {test_nats['recon']:7.3f} + KL {test_nats['kl']:6.3f}"
                      + (f", z2 {test_nats['kl_z2']:6.3f}" if "kl_z2" in test_nats else "") + ") "
                      f"nats/example  {test_nats['active_units']:3d} active units  {seconds:5.1f}s"
                      + ("  *best" if is_best else ""),
                      flush=True)  # one line per epoch, also when piped to a log
                warning = collapse_warning(rows, iwae=cfg.loss.iwae_k > 1)
                if warning:
                    print(warning, file=sys.stderr)
            if early_stop:
                log(world, f"early stop after epoch {epoch}: {early_stop}; best.pt holds epoch {best['epoch']}")
                break
            if world.any(bool(stop.signum), device) and epoch < cfg.train.epochs:
                raise Interrupted(stop.signum or signal.SIGTERM, f"stopped after epoch {epoch}; continue with: "
                                                                 f"{resume_command(run_dir, world)}")
    if tensorboard:
        tensorboard.close()
    return TrainResult(run_dir, rows, best, model)


def stops_early(cfg: Config, best: dict, epoch: int) -> str:
    """Why training stops after `epoch` under train.patience ('' while it goes on)."""
    if not cfg.train.patience or best["epoch"] is None or epoch - best["epoch"] < cfg.train.patience:
        return ""
    return (f"the validation loss has not improved for {epoch - best['epoch']} epochs (train.patience="
            f"{cfg.train.patience}; best {best['loss']:.3f} nats at epoch {best['epoch']})")


def write_epoch(cfg: Config, model: VAE, test_split: Split, fixed_z: torch.Tensor, run_dir: Path,
                rows: list[dict], tensorboard: TensorBoardLog | None, final: bool = False) -> None:
    """Everything of an epoch but its checkpoint, which comes last: a resume from the previous one
    redoes the epoch and rewrites the same files, and drops the metrics rows past it. The pictures
    are drawn every viz.every epochs and after the `final` one (or train.epochs)."""
    epoch = rows[-1]["epoch"]
    rundir.write_metrics(run_dir, rows)
    pictures = []
    if epoch % cfg.viz.every == 0 or epoch == cfg.train.epochs or final:
        pictures = save_pictures(model, test_split, fixed_z, cfg.viz.digit, run_dir / "images",
                                 suffix=f"_epoch{epoch:03d}")
        plot_loss_curves(rows, run_dir / "images" / "loss_curves.png")  # ~0.3 s: not every epoch of long runs
    if tensorboard:
        tensorboard.epoch(rows[-1], pictures)


def resume_command(run_dir: Path, world: World) -> str:
    launcher = f"torchrun --nproc_per_node {world.size} train.py" if world.size > 1 else "python train.py"
    return f"{launcher} --resume {run_dir}"


def log(world: World, message: str, file=None) -> None:
    """Print on rank 0 only."""
    if world.main:
        print(message, file=file or sys.stdout, flush=True)
