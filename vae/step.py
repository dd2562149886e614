"""The training step: one Adam update on a batch, run eagerly or replayed as a CUDA graph."""
from __future__ import annotations

import torch
from torch import nn

from vae.config import Config
from vae.data import PIXELS, Split, binarize
from vae.loss import objective_nats
from vae.resume import EpochProgress


def optimizer_step(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, eps: torch.Tensor, cfg: Config,
                   kl_weight: float | torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step on `scale` times the batch-summed objective of rows x (b, 784) with noise
    eps (k, b, latent), k = loss.iwae_k.

    Returns the negative ELBO's summed nats (3,) (total, reconstruction, KL) and the sum of logvar,
    as device tensors: the step only launches kernels and never waits for them, so that a CUDA
    graph can capture it.
    """
    # No autocast cache: a graph must not hold casts made outside it (each weight is used once anyway).
    with torch.autocast(x.device.type, torch.bfloat16, enabled=cfg.train.precision == "bf16", cache_enabled=False):
        out = net(x, eps)  # logits (k, b, 784)
    objective, terms = objective_nats(out.logits.float(), x, out.rate, cfg.loss, kl_weight)
    opt.zero_grad(set_to_none=True)
    (objective * scale).backward()
    if cfg.train.grad_clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.train.grad_clip)
    opt.step()
    nats = torch.stack([terms.total.sum(), terms.reconstruction.sum(), terms.kl.sum()])
    return nats.detach(), out.logvar.detach().float().sum()


def draw_batch(split: Split, index: torch.Tensor, gen: torch.Generator, cfg: Config,
               noise_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A step's examples and random draws: the rows at `index` (b, 784), binarized afresh under
    data.binarize=dynamic, and their noise (b, k, noise_dim), k = loss.iwae_k, drawn from `gen` in
    this order (GraphedStep.draw makes the same draws)."""
    x = split.pixels(index)
    if cfg.data.binarize == "dynamic":
        x = binarize(x, gen)
    return x, torch.randn(len(index), cfg.loss.iwae_k, noise_dim, generator=gen, device=x.device)


def train_step(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, eps: torch.Tensor,
               progress: EpochProgress, cfg: Config, kl_weight: float = 1.0, batch: int | None = None,
               world_size: int = 1) -> None:
    """One Adam step on the objective of a batch of `batch` examples (default len(x)), averaged.

    This process holds the rows x (b, 784) of it and their noise eps (k, b, latent); the negative
    ELBO's nats go into `progress`. Under DDP the gradients are averaged over the `world_size`
    processes, so each one's share is weighted to make that average the batch mean.
    """
    batch = batch or len(x)
    progress.record(batch, *optimizer_step(net, opt, x, eps, cfg, kl_weight, world_size / batch))


class GraphedStep:
    """The step of a full batch as one CUDA graph, replayed batch after batch (one process, CUDA).

    A small model's step is ~100 kernels of a few microseconds each: launched one by one from
    Python they cost more than they compute, and one graph launch replaces them all. The graph
    reads its batch from fixed buffers, which each call fills with the draws the eager loop makes,
    in its order and from the same generator, so a graphed run follows the eager run's random
    stream. The first steps run eagerly on a side stream (warm-up before capture, and real training
    steps all the same); the graph is captured again whenever the learning rate changes, since the
    fused Adam kernel takes it as a constant.
    """

    WARMUP_STEPS = 3

    def __init__(self, net: nn.Module, opt: torch.optim.Optimizer, split: Split, cfg: Config, noise_dim: int,
                 device: torch.device):
        batch, k = cfg.train.batch_size, cfg.loss.iwae_k
        self.net, self.opt, self.split, self.cfg = net, opt, split, cfg
        self.index = torch.zeros(batch, dtype=torch.long, device=device)
        self.uniform = torch.zeros(batch, PIXELS, device=device) if cfg.data.binarize == "dynamic" else None
        self.noise = torch.zeros(batch, k, noise_dim, device=device)
        self.kl_weight, self.kl_weight_value = torch.ones((), device=device), 1.0
        self.graph, self.outputs, self.lr, self.warm_steps = None, None, None, 0

    def fits(self, index: torch.Tensor) -> bool:
        """Whether a batch can take the graph: only full ones (the last of an epoch may be short)."""
        return len(index) == len(self.index)

    def draw(self, index: torch.Tensor, gen: torch.Generator) -> None:
        """Fill the buffers with the examples at `index` and draw_batch's random draws, in its order."""
        self.index.copy_(index)
        if self.uniform is not None:
            torch.rand(self.uniform.shape, generator=gen, out=self.uniform)
        torch.randn(self.noise.shape, generator=gen, out=self.noise)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """What the buffers hold, as draw_batch returns it: x (b, 784) and the noise (b, k, noise_dim)."""
        x = self.split.pixels(self.index)
        if self.uniform is not None:
            x = (self.uniform < x).float()  # data.binarize, with the uniforms drawn beforehand
        return x, self.noise

    def __call__(self, index: torch.Tensor, gen: torch.Generator, kl_weight: float, progress: EpochProgress) -> None:
        """Train on the examples at `index`, drawing their binarization and noise from `gen`."""
        self.draw(index, gen)
        if kl_weight != self.kl_weight_value:
            self.kl_weight.fill_(kl_weight)
            self.kl_weight_value = kl_weight
        lr = self.opt.param_groups[0]["lr"]
        if self.graph is None or lr != self.lr:
            if self.warm_steps < self.WARMUP_STEPS:
                self.warm_steps += 1
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):
                    outputs = self._step()
                torch.cuda.current_stream().wait_stream(side)
                progress.record(len(self.index), *outputs)
                return
            self._capture()
            self.lr = lr
        self.graph.replay()
        progress.record(len(self.index), *self.outputs)

    def _step(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, noise = self.batch()
        return optimizer_step(self.net, self.opt, x, noise.transpose(0, 1), self.cfg, self.kl_weight,
                              1 / len(self.index))

    def _capture(self) -> None:
        self.graph = self.outputs = None  # the previous graph's memory goes back first
        graph = torch.cuda.CUDAGraph()
        for group in self.opt.param_groups:
            group["capturable"] = True  # what torch asks of a captured step(); the fused kernel is the same
        try:
            with torch.cuda.graph(graph):
                self.outputs = self._step()
        finally:
            for group in self.opt.param_groups:
                group["capturable"] = False
        self.graph = graph
