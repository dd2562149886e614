"""make_step: the run's training step, picked: the written-out CPU step where it fits (vae/train/fast_step.py),
else autograd's, replayed as a CUDA graph where it can be (vae/train/autograd_step.py); at the speed the run
resolved (vae/train/speed.py)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.nn.parallel import DistributedDataParallel

from vae.config.schema import Config
from vae.data.load import Splits
from vae.model.vae import VAE
from vae.train.autograd_step import EagerStep, GraphedStep
from vae.train.distributed import World
from vae.train.fast_step import FastStep, fits
from vae.train.step import Batches, Speed, Step, StepOptions


@contextlib.contextmanager
def compiled_graphs_dropped(compiled: bool) -> Iterator[None]:
    """torch.compile's graphs of the block's steps dropped after it, when `compiled`: a process that trains again (a
    sweep's worker, trial after trial) compiles afresh rather than add graphs up to torch's recompile limit, past
    which its steps would run uncompiled."""
    try:
        yield
    finally:
        if compiled:
            import torch._dynamo  # a slow import that only a compiled run needs

            torch._dynamo.reset()


def make_step(cfg: Config, model: VAE, opt: torch.optim.Optimizer, splits: Splits, world: World,
              device: torch.device, speed: Speed) -> Step:
    """The step at `speed` (its precision and compiling; train.precision and train.compile as resolved): on the CPU
    the MLP VAE's written-out step where it fits (its gradients compiled), else autograd's, the model wrapped for
    gradient averaging, the model and the likelihood's terms compiled together, replayed as a CUDA graph where it
    can be."""
    net = model
    if world.size > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    batches = Batches(splits.train, cfg.data.binarize == "dynamic", cfg.loss.iwae_k, model.noise_dim)
    options = StepOptions(cfg.loss, speed.bf16, cfg.train.grad_clip, model.likelihood)
    if fits(cfg, model, world.size, device):
        full = min(cfg.train.batch_size, len(splits.train))  # the rows of a full batch, the one compiled
        return FastStep(model, opt, batches, options, full if speed.compiled else 0)
    step = EagerStep(net, opt, batches, options, world, speed.compiled)
    if cfg.train.cuda_graph and device.type == "cuda" and world.size == 1:
        return GraphedStep(step, cfg.train.batch_size)
    return step
