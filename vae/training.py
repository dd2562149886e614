"""train(cfg): the training loop, top to bottom, with checkpoints, metrics and pictures each epoch."""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from vae import rundir
from vae.checkpoint import (FORMAT_VERSION, load_checkpoint, load_state, resolve_checkpoint, run_dir_of,
                            save_checkpoint)
from vae.config import Config, check_same_run, to_dict
from vae.data import load_mnist
from vae.device import resolve_device
from vae.diagnostics import collapse_warning
from vae.errors import Interrupted, UserError
from vae.evaluation import evaluate, fixed_latents, save_pictures
from vae.interrupt import StopRequest
from vae.loss import vae_loss
from vae.model import VAE
from vae.resume import EpochProgress, carry_best, last_position, position, restore_rng, rng_state
from vae.tblog import TensorBoardLog, summary_writer_class
from vae.viz import plot_loss_curves

SYNC_EVERY = 50  # steps between reads of the loss from the device (progress bar, NaN check)


@dataclass
class TrainResult:
    run_dir: Path
    rows: list[dict]  # metrics.csv, one dict per epoch
    best_test_loss: float
    model: VAE


def train_step(model: VAE, opt: torch.optim.Optimizer, x: torch.Tensor, gen: torch.Generator,
               grad_clip: float, progress: EpochProgress) -> None:
    """One Adam step on the mean negative ELBO of batch x (B, 784); its nats go into `progress`."""
    logits, mu, logvar = model(x, gen)
    terms = vae_loss(logits, x, mu, logvar)
    opt.zero_grad(set_to_none=True)
    terms.total.mean().backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    progress.record(len(x), torch.stack([terms.total.sum(), terms.reconstruction.sum(), terms.kl.sum()]),
                    logvar.sum())


def train(cfg: Config, resume: str | Path | None = None, overwrite: bool = False,
          argv: list[str] | None = None) -> TrainResult:
    """Train from scratch, or continue the checkpoint `resume` (a file or a run directory).

    A checkpoint continues in place when output.dir is the run directory it belongs to; anywhere
    else the run is forked into output.dir, which must not hold a run. Everything the user
    supplied is checked before anything in a run directory is written. On SIGINT/SIGTERM the
    current step finishes, last.pt is saved, and Interrupted is raised.
    """
    device = resolve_device(cfg.train.device)
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
        n_params = sum(p.numel() for p in VAE(cfg.model).parameters())
    # last.pt, best.pt and a temp file (weights + Adam's two moments), plus ~0.3 MiB of images an epoch
    rundir.check_space(run_dir, 3 * 3 * 4 * n_params + cfg.train.epochs * 300_000 + 10 * 2**20)
    train_split, test_split = load_mnist(cfg.data.root, cfg.data.download, device)

    if cfg.train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs for it
    torch.use_deterministic_algorithms(cfg.train.deterministic)
    torch.manual_seed(cfg.train.seed)
    model = VAE(cfg.model).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
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
        print(f"{resume} is already at epoch {start - 1} of train.epochs={cfg.train.epochs}: "
              f"nothing to do (raise train.epochs to train on)")
        return TrainResult(run_dir, rows, state["best_test_loss"], model)

    rundir.create(run_dir, clear=overwrite and not in_place)
    best = math.inf
    if state is not None:
        best = state["best_test_loss"]
        carry_best(source, run_dir, state["epoch"])
    rundir.write_run_info(run_dir, cfg, argv or sys.argv, device)
    rundir.write_metrics(run_dir, rows)
    tensorboard = TensorBoardLog(run_dir / "tensorboard", start) if cfg.logging.tensorboard else None
    fixed_z = fixed_latents(cfg.model.latent_dim, cfg.train.seed, device)
    last, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    every = cfg.train.checkpoint_every_steps
    n_batches = math.ceil(len(train_split) / cfg.train.batch_size)

    def checkpoint(epochs_done: int, inside: EpochProgress | None = None) -> dict:
        return {"format_version": FORMAT_VERSION, "config": to_dict(cfg), "epoch": epochs_done,
                "best_test_loss": best, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "rng": rng_state(gen), "progress": inside.state() if inside else None}

    resuming_at = f" (epoch {start} from step {progress.step})" if progress else ""
    print(f"training {sum(p.numel() for p in model.parameters()):,} parameters on {device}, "
          f"epochs {start}..{cfg.train.epochs}{resuming_at}, writing to {run_dir}")
    with StopRequest() as stop:
        for epoch in range(start, cfg.train.epochs + 1):
            progress = progress or EpochProgress.begin(len(train_split), gen)
            model.train()
            t0 = time.perf_counter()
            with tqdm(total=n_batches, initial=progress.step, desc=f"epoch {epoch}/{cfg.train.epochs}",
                      leave=False, disable=None, unit="batch") as bar:
                for idx in progress.remaining(cfg.train.batch_size):
                    train_step(model, opt, train_split.pixels(idx), gen, cfg.train.grad_clip, progress)
                    bar.update()
                    if progress.step % SYNC_EVERY == 0:
                        progress.check_finite(epoch)
                        bar.set_postfix(loss=f"{progress.means()['loss']:.2f}")
                    if progress.step < n_batches and (stop.signum or every and progress.step % every == 0):
                        progress.check_finite(epoch)
                        progress.seconds += time.perf_counter() - t0
                        t0 = time.perf_counter()
                        save_checkpoint(checkpoint(epoch - 1, progress), last)
                        if stop.signum:
                            raise Interrupted(stop.signum, f"stopped in epoch {epoch} after step "
                                                           f"{progress.step}; continue with: "
                                                           f"python train.py --resume {run_dir}")
            progress.check_finite(epoch)
            train_nats = progress.means()
            test_nats = evaluate(model, test_split, cfg.train.seed)
            if not math.isfinite(test_nats["loss"]):  # the last step's update broke the weights
                raise UserError(f"training diverged at the end of epoch {epoch}: the test loss is not "
                                f"finite. The last checkpoint is kept; lower train.lr or set train.grad_clip")
            seconds = progress.seconds + time.perf_counter() - t0
            progress = None

            # Everything of this epoch is written before its checkpoint: a resume from the previous
            # one redoes the epoch and rewrites the same files, and drops the metrics rows past it.
            rows.append({"epoch": epoch, **{f"train_{k}": v for k, v in train_nats.items()},
                         **{f"test_{k}": v for k, v in test_nats.items()}, "seconds": seconds})
            rundir.write_metrics(run_dir, rows)
            pictures = []
            if epoch % cfg.viz.every == 0 or epoch == cfg.train.epochs:
                pictures = save_pictures(model, test_split, fixed_z, cfg.viz.digit, run_dir / "images",
                                         suffix=f"_epoch{epoch:03d}")
            plot_loss_curves(rows, run_dir / "images" / "loss_curves.png")
            if tensorboard:
                tensorboard.epoch(rows[-1], pictures)
            is_best = test_nats["loss"] < best
            best = min(best, test_nats["loss"])
            # best.pt is the same moment as last.pt (weights, optimizer and RNG together), written
            # first: a crash between the two leaves last.pt behind, and the resumed epoch redoes it.
            save_checkpoint(checkpoint(epoch), *([best_path] if is_best else []), last)
            print(f"epoch {epoch:3d}/{cfg.train.epochs}  train {train_nats['loss']:8.3f}  "
                  f"test {test_nats['loss']:8.3f} (recon {test_nats['recon']:7.3f} + KL {test_nats['kl']:6.3f}) "
                  f"nats/example  {test_nats['active_units']:3d} active units  {seconds:5.1f}s"
                  + ("  *best" if is_best else ""),
                  flush=True)  # one line per epoch, also when piped to a log
            warning = collapse_warning(rows)
            if warning:
                print(warning, file=sys.stderr)
            if stop.signum and epoch < cfg.train.epochs:
                raise Interrupted(stop.signum, f"stopped after epoch {epoch}; continue with: "
                                               f"python train.py --resume {run_dir}")
    if tensorboard:
        tensorboard.close()
    return TrainResult(run_dir, rows, best, model)
