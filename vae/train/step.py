"""The training step: one Adam update on a batch, run eagerly or replayed as a CUDA graph, and make_step, which
builds the run's.

Every step (these two and vae/train/fast_step.py's) is called the same way, step(index, gen, kl_weight,
progress), and draws a batch's binarization and noise through one `Batches`, so a graphed or written-out run
follows the eager run's random stream.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vae.config.schema import Config, LossConfig
from vae.data.load import Splits
from vae.data.split import Split, binarize
from vae.model.likelihoods import BERNOULLI, Likelihood
from vae.model.vae import VAE
from vae.train import fast_step
from vae.train.distributed import World
from vae.train.objective import objective_nats
from vae.train.progress import EpochProgress


class Step(Protocol):
    def __call__(self, index: torch.Tensor, gen: torch.Generator, kl_weight: float,
                 progress: EpochProgress) -> None:
        """Train on the examples at `index`, drawing their randomness from `gen`; count them in `progress`."""


class StepOptions(NamedTuple):
    """What an update needs beyond the model and the batch."""

    loss: LossConfig
    bf16: bool = False  # the forward pass under bf16 autocast
    grad_clip: float = 0.0  # clip the gradient norm to this; 0 = off
    likelihood: Likelihood = BERNOULLI  # the model's p(x|z)


def optimizer_step(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, eps: torch.Tensor,
                   options: StepOptions, kl_weight: float | torch.Tensor,
                   scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step on `scale` times the batch-summed objective of rows x (b, D) with noise
    eps (k, b, noise_dim), k = loss.iwae_k.

    Returns the negative ELBO's summed nats (3,) (total, reconstruction, KL) and the sum of logvar,
    as device tensors: the step only launches kernels and never waits for them, so that a CUDA
    graph can capture it.
    """
    # No autocast cache: a graph must not hold casts made outside it (each weight is used once anyway).
    with torch.autocast(x.device.type, torch.bfloat16, enabled=options.bf16, cache_enabled=False):
        out = net(x, eps)  # logits (k, b, D)
    objective, terms = objective_nats(out.logits.float(), x, out.rate, options.loss, kl_weight,
                                      (out.z, out.mu.float(), out.logvar.float()), options.likelihood)
    opt.zero_grad(set_to_none=True)
    (objective * scale).backward()
    if options.grad_clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), options.grad_clip)
    opt.step()
    nats = torch.stack([terms.total.sum(), terms.reconstruction.sum(), terms.kl.sum()])
    return nats.detach(), out.logvar.detach().float().sum()


@dataclass(frozen=True)
class Batches:
    """A step's examples and random draws, in one order for both steps: the binarization's uniforms
    (under data.binarize=dynamic), then the noise of loss.iwae_k samples of the latents."""

    split: Split
    dynamic: bool  # binarize the training images afresh at every use
    k: int
    noise_dim: int

    def randoms(self, n: int, gen: torch.Generator, out: tuple[torch.Tensor | None, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Uniforms (n, D) (None unless dynamic) and noise (n, k, noise_dim) from `gen`, into `out` if given."""
        uniform, noise = out or (None, None)
        device = self.split.images.device
        if self.dynamic:
            uniform = torch.rand((n, self.split.dims), generator=gen, device=device, out=uniform)
        return uniform, torch.randn((n, self.k, self.noise_dim), generator=gen, device=device, out=noise)

    def examples(self, index: torch.Tensor, uniform: torch.Tensor | None) -> torch.Tensor:
        """The rows at `index` (b, D), binarized with `uniform` when given."""
        x = self.split.pixels(index)
        return x if uniform is None else binarize(x, uniform)

    def draw(self, index: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """x (b, D) and noise (b, k, noise_dim) of the examples at `index`."""
        uniform, noise = self.randoms(len(index), gen)
        return self.examples(index, uniform), noise


class EagerStep:
    """The step launched op by op. Under torchrun each process draws the whole batch, so that all
    follow one random stream, and trains on its share; DDP averages the gradients, each share
    weighted so that the average is the batch mean."""

    def __init__(self, net: nn.Module, opt: torch.optim.Optimizer, batches: Batches, options: StepOptions,
                 world: World = World()):
        self.net, self.opt, self.batches, self.options, self.world = net, opt, batches, options, world

    def __call__(self, index: torch.Tensor, gen: torch.Generator, kl_weight: float, progress: EpochProgress) -> None:
        x, eps = self.batches.draw(index, gen)
        x, eps = self.world.shard(x), self.world.shard(eps).transpose(0, 1)  # eps (k, b, noise_dim)
        progress.record(len(index), *optimizer_step(self.net, self.opt, x, eps, self.options, kl_weight,
                                                    self.world.size / len(index)))


class GraphedStep:
    """The step of a full batch as one CUDA graph, replayed batch after batch (one process, CUDA);
    a short batch (the last of an epoch) takes the eager step.

    A small model's step is ~100 kernels of a few microseconds each: launched one by one from
    Python they cost more than they compute, and one graph launch replaces them all. The graph
    reads its batch from fixed buffers, which each call fills with the eager step's draws. The
    first steps run eagerly on a side stream (warm-up before capture, and real training steps all
    the same); the graph is captured again whenever the learning rate changes, since the fused
    Adam kernel takes it as a constant.
    """

    WARMUP_STEPS = 3

    def __init__(self, eager: EagerStep, batch_size: int):
        self.eager, self.batches = eager, eager.batches
        device = self.batches.split.images.device
        self.index = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.uniform = torch.zeros(batch_size, self.batches.split.dims, device=device) if self.batches.dynamic else None
        self.noise = torch.zeros(batch_size, self.batches.k, self.batches.noise_dim, device=device)
        self.kl_weight, self.kl_weight_value = torch.ones((), device=device), 1.0
        self.graph, self.outputs, self.lr, self.warm_steps = None, None, None, 0

    def __call__(self, index: torch.Tensor, gen: torch.Generator, kl_weight: float, progress: EpochProgress) -> None:
        if len(index) != len(self.index):
            return self.eager(index, gen, kl_weight, progress)
        self.index.copy_(index)
        self.batches.randoms(len(index), gen, out=(self.uniform, self.noise))
        if kl_weight != self.kl_weight_value:
            self.kl_weight.fill_(kl_weight)
            self.kl_weight_value = kl_weight
        lr = self.eager.opt.param_groups[0]["lr"]
        if self.graph is None or lr != self.lr:
            if self.warm_steps < self.WARMUP_STEPS:
                self.warm_steps += 1
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    outputs = self._step()
                torch.cuda.current_stream().wait_stream(side)
                progress.record(len(index), *outputs)
                return
            self._capture()
            self.lr = lr
        self.graph.replay()
        progress.record(len(index), *self.outputs)

    def _step(self) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.eager
        x = self.batches.examples(self.index, self.uniform)
        return optimizer_step(e.net, e.opt, x, self.noise.transpose(0, 1), e.options, self.kl_weight,
                              1 / len(self.index))

    def _capture(self) -> None:
        self.graph = self.outputs = None  # the previous graph's memory goes back first
        graph = torch.cuda.CUDAGraph()
        opt = self.eager.opt
        for group in opt.param_groups:
            group["capturable"] = True  # what torch asks of a captured step(); the fused kernel is the same
        try:
            with torch.cuda.graph(graph):
                self.outputs = self._step()
        finally:
            for group in opt.param_groups:
                group["capturable"] = False
        self.graph = graph


@contextlib.contextmanager
def compiled_graphs_dropped(compiled: bool) -> Iterator[None]:
    """torch.compile's graphs of the block's steps dropped after it, when `compiled`: a process that trains again (a
    sweep's worker, trial after trial) compiles afresh rather than add graphs up to torch's recompile limit, past
    which its steps would run uncompiled."""
    try:
        yield
    finally:
        if compiled:
            import torch._dynamo  # 1.4 s of imports that only a compiled run needs

            torch._dynamo.reset()


def make_step(cfg: Config, model: VAE, opt: torch.optim.Optimizer, splits: Splits, world: World,
              device: torch.device, bf16: bool) -> Step:
    """The step: the model wrapped for gradient averaging and/or compiled, replayed as a CUDA graph where it can be,
    its forward pass under bf16 autocast when `bf16`; on the CPU the MLP VAE's written-out step where it fits (its
    gradients compiled under train.compile)."""
    net = model
    if world.size > 1:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    batches = Batches(splits.train, cfg.data.binarize == "dynamic", cfg.loss.iwae_k, model.noise_dim)
    options = StepOptions(cfg.loss, bf16, cfg.train.grad_clip, model.likelihood)
    if fast_step.fits(cfg, model, world.size, device):
        full = min(cfg.train.batch_size, len(splits.train))  # the rows of a full batch, the one compiled
        return fast_step.FastStep(model, opt, batches, options, full if cfg.train.compile else 0)
    net = torch.compile(net) if cfg.train.compile else net
    step = EagerStep(net, opt, batches, options, world)
    if cfg.train.cuda_graph and device.type == "cuda" and world.size == 1:
        return GraphedStep(step, cfg.train.batch_size)
    return step
