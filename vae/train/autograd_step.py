"""autograd's training step: one Adam update on a batch, launched op by op (EagerStep, under torchrun too) or replayed
as a CUDA graph (GraphedStep)."""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vae.train.distributed import World
from vae.train.objective import objective_nats
from vae.train.progress import EpochProgress
from vae.train.step import Batches, StepOptions


def forward_objective(net: nn.Module, x: torch.Tensor, eps: torch.Tensor, options: StepOptions,
                      kl_weight: float | torch.Tensor, scale: float) -> tuple[torch.Tensor, ...]:
    """`scale` times the batch-summed objective of rows x (b, D) with noise eps (k, b, noise_dim), k = loss.iwae_k;
    the negative ELBO's summed nats (3,) (total, reconstruction, KL) and the sum of logvar. The part of the step
    that train.compile compiles whole: the model and the likelihood's terms, fused together."""
    # No autocast cache: a graph must not hold casts made outside it (each weight is used once anyway).
    with torch.autocast(x.device.type, torch.bfloat16, enabled=options.bf16, cache_enabled=False):
        out = net(x, eps)  # logits (k, b, D)
    objective, terms = objective_nats(out.logits.float(), x, out.rate, options.loss, kl_weight,
                                      (out.z, out.mu.float(), out.logvar.float()), options.likelihood)
    nats = torch.stack([terms.total.sum(), terms.reconstruction.sum(), terms.kl.sum()])
    return objective * scale, nats.detach(), out.logvar.detach().float().sum()


def optimizer_step(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, eps: torch.Tensor,
                   options: StepOptions, kl_weight: float | torch.Tensor, scale: float,
                   forward: Callable[..., tuple[torch.Tensor, ...]] = forward_objective
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """One Adam step on `scale` times the batch-summed objective (`forward`'s, compiled or not).

    Returns the negative ELBO's summed nats (3,) (total, reconstruction, KL) and the sum of logvar,
    as device tensors: the step only launches kernels and never waits for them, so that a CUDA
    graph can capture it.
    """
    objective, nats, logvar_sum = forward(net, x, eps, options, kl_weight, scale)
    opt.zero_grad(set_to_none=True)
    objective.backward()
    if options.grad_clip:
        torch.nn.utils.clip_grad_norm_(net.parameters(), options.grad_clip)
    opt.step()
    return nats, logvar_sum


class EagerStep:
    """The step launched op by op. Under torchrun each process draws the whole batch, so that all
    follow one random stream, and trains on its share; DDP averages the gradients, each share
    weighted so that the average is the batch mean."""

    def __init__(self, net: nn.Module, opt: torch.optim.Optimizer, batches: Batches, options: StepOptions,
                 world: World = World(), compiled: bool = False):
        self.net, self.opt, self.batches, self.options, self.world = net, opt, batches, options, world
        self.forward = torch.compile(forward_objective) if compiled else forward_objective
        self.compiled = compiled

    def __call__(self, index: torch.Tensor, gen: torch.Generator, kl_weight: float, progress: EpochProgress) -> None:
        x, eps = self.batches.draw(index, gen)
        x, eps = self.world.shard(x), self.world.shard(eps).transpose(0, 1)  # eps (k, b, noise_dim)
        # Compiled, the KL weight is a tensor: as a float torch.compile would compile again for each of a warm-up's.
        weight = torch.tensor(kl_weight, device=x.device) if self.compiled else kl_weight
        progress.record(len(index), *optimizer_step(self.net, self.opt, x, eps, self.options, weight,
                                                    self.world.size / len(index), self.forward))


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
                              1 / len(self.index), e.forward)

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
