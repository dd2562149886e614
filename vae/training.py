"""train(cfg): the training loop, top to bottom, with checkpoints, metrics and pictures each epoch."""
from __future__ import annotations

import math
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
from vae.data import Split, batches, load_mnist
from vae.device import resolve_device
from vae.diagnostics import collapse_warning
from vae.errors import UserError
from vae.evaluation import evaluate, fixed_latents, save_pictures
from vae.files import atomic_write
from vae.loss import vae_loss
from vae.model import VAE
from vae.tblog import TensorBoardLog, summary_writer_class
from vae.viz import plot_loss_curves


@dataclass
class TrainResult:
    run_dir: Path
    rows: list[dict]  # metrics.csv, one dict per epoch
    best_test_loss: float
    model: VAE


def rng_state(gen: torch.Generator) -> dict:
    return {"device_type": gen.device.type, "generator": gen.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict, gen: torch.Generator) -> None:
    """Put every random stream back where the checkpoint left it (same device type only)."""
    torch.set_rng_state(state["torch"])
    if state["device_type"] != gen.device.type:
        print(f"warning: the checkpoint's random streams were on {state['device_type']}, this run is on "
              f"{gen.device.type}: training continues, but not bit-for-bit as it would have",
              file=sys.stderr)
        return
    gen.set_state(state["generator"])
    if state["cuda"] and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def train_epoch(model: VAE, opt: torch.optim.Optimizer, split: Split, batch_size: int,
                gen: torch.Generator, desc: str) -> dict[str, float]:
    """One shuffled pass over `split`; returns mean nats per example of the loss and its terms."""
    model.train()
    sums = torch.zeros(3, dtype=torch.float64, device=split.images.device)
    n_batches = math.ceil(len(split) / batch_size)
    with tqdm(total=n_batches, desc=desc, leave=False, disable=None, unit="batch") as bar:
        for step, idx in enumerate(batches(len(split), batch_size, gen), start=1):
            x = split.pixels(idx)  # (B, 784)
            logits, mu, logvar = model(x, gen)
            terms = vae_loss(logits, x, mu, logvar)
            loss = terms.total.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.stack([terms.total.sum(), terms.reconstruction.sum(), terms.kl.sum()]).detach()
            bar.update()
            if step % 50 == 0 or step == n_batches:  # .item() waits for the device: not every step
                bar.set_postfix(loss=f"{sums[0].item() / min(step * batch_size, len(split)):.2f}")
    loss, recon, kl = (sums / len(split)).tolist()
    return {"loss": loss, "recon": recon, "kl": kl}


def _last_epoch(run_dir: Path) -> int:
    """The epoch of a run directory's last.pt (0 when it has none that loads)."""
    try:
        return load_checkpoint(run_dir / "checkpoints" / "last.pt")[0]["epoch"]
    except UserError:
        return 0


def _carry_best(source: Path | None, run_dir: Path, epoch: int) -> float:
    """Best test loss so far, keeping its best.pt in run_dir (copied there when forking).

    A best.pt from after `epoch` belongs to discarded work: it is removed, and the next epoch
    writes a new one.
    """
    src, dest = (source or run_dir) / "checkpoints" / "best.pt", run_dir / "checkpoints" / "best.pt"
    try:
        best = load_checkpoint(src)[0] if src.is_file() else None
    except UserError:
        best = None
    if best is None or best["epoch"] > epoch:
        dest.unlink(missing_ok=True)
        return math.inf
    if src.resolve() != dest.resolve():
        atomic_write(dest, lambda f: f.write(src.read_bytes()))
    return best["best_test_loss"]


def train(cfg: Config, resume: str | Path | None = None, overwrite: bool = False,
          argv: list[str] | None = None) -> TrainResult:
    """Train from scratch, or continue the checkpoint `resume` (a file or a run directory).

    A checkpoint continues in place when output.dir is the run directory it belongs to; anywhere
    else the run is forked into output.dir, which must not hold a run. Everything the user
    supplied is checked before anything in a run directory is written.
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
    elif not overwrite and _last_epoch(run_dir) > state["epoch"]:
        raise UserError(f"{run_dir} has trained to epoch {_last_epoch(run_dir)}: continuing it from "
                        f"{resume.name} (epoch {state['epoch']}) would discard the later epochs. Fork it "
                        f"with output.dir=DIR, or pass --overwrite to discard them")
    train_split, test_split = load_mnist(cfg.data.root, cfg.data.download, device)

    torch.manual_seed(cfg.train.seed)
    model = VAE(cfg.model).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
    start, rows = 1, []
    if state is not None:
        load_state(model, state["model"], resume)
        load_state(opt, state["optimizer"], resume)
        restore_rng(state["rng"], gen)
        start = state["epoch"] + 1
        # Rows after the checkpoint's epoch belong to work that is about to be redone.
        rows = [r for r in rundir.read_metrics(source) if r["epoch"] < start] if source else []
    if start > cfg.train.epochs:
        print(f"{resume} is already at epoch {start - 1} of train.epochs={cfg.train.epochs}: "
              f"nothing to do (raise train.epochs to train on)")
        return TrainResult(run_dir, rows, state["best_test_loss"], model)

    rundir.create(run_dir, clear=overwrite and not in_place)
    best = _carry_best(source, run_dir, state["epoch"]) if state is not None else math.inf
    rundir.write_run_info(run_dir, cfg, argv or sys.argv, device)
    rundir.write_metrics(run_dir, rows)
    tensorboard = TensorBoardLog(run_dir / "tensorboard") if cfg.logging.tensorboard else None
    fixed_z = fixed_latents(cfg.model.latent_dim, cfg.train.seed, device)
    last, best_path = run_dir / "checkpoints" / "last.pt", run_dir / "checkpoints" / "best.pt"
    print(f"training {sum(p.numel() for p in model.parameters()):,} parameters on {device}, "
          f"epochs {start}..{cfg.train.epochs}, writing to {run_dir}")

    for epoch in range(start, cfg.train.epochs + 1):
        t0 = time.perf_counter()
        tr = train_epoch(model, opt, train_split, cfg.train.batch_size, gen,
                         desc=f"epoch {epoch}/{cfg.train.epochs}")
        te = evaluate(model, test_split, cfg.train.seed)
        seconds = time.perf_counter() - t0

        diverged = [f"{split} {term}" for split, m in (("train", tr), ("test", te))
                    for term in ("recon", "kl") if not math.isfinite(m[term])]
        if diverged:
            raise UserError(f"training diverged in epoch {epoch}: {', '.join(diverged)} not finite; nothing "
                            f"of this epoch was saved. Lower train.lr, or resume from {last}")
        rows.append({"epoch": epoch, **{f"train_{k}": v for k, v in tr.items()},
                     **{f"test_{k}": v for k, v in te.items()}, "seconds": seconds})
        rundir.write_metrics(run_dir, rows)  # before the checkpoint: a resume drops rows past it
        is_best = te["loss"] < best
        best = min(best, te["loss"])
        # best.pt is the same moment as last.pt (weights, optimizer and RNG together), written
        # first: a crash between the two leaves last.pt behind, and the resumed epoch redoes it.
        save_checkpoint({"format_version": FORMAT_VERSION, "config": to_dict(cfg), "epoch": epoch,
                         "best_test_loss": best, "model": model.state_dict(),
                         "optimizer": opt.state_dict(), "rng": rng_state(gen)},
                        *([best_path] if is_best else []), last)

        pictures = []
        if epoch % cfg.viz.every == 0 or epoch == cfg.train.epochs:
            pictures = save_pictures(model, test_split, fixed_z, cfg.viz.digit, run_dir / "images",
                                     suffix=f"_epoch{epoch:03d}")
        plot_loss_curves(rows, run_dir / "images" / "loss_curves.png")
        if tensorboard:
            tensorboard.epoch(rows[-1], pictures)
        print(f"epoch {epoch:3d}/{cfg.train.epochs}  train {tr['loss']:8.3f}  test {te['loss']:8.3f} "
              f"(recon {te['recon']:7.3f} + KL {te['kl']:6.3f}) nats/example  "
              f"{te['active_units']:3d} active units  {seconds:5.1f}s" + ("  *best" if is_best else ""))
        warning = collapse_warning(rows)
        if warning:
            print(warning, file=sys.stderr)
    if tensorboard:
        tensorboard.close()
    return TrainResult(run_dir, rows, best, model)
