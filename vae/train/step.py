"""What every training step shares: its interface, its options, where its examples and random draws come from, and
the speed it runs at.

Every step (vae/train/autograd_step.py's eager and graphed steps, vae/train/fast_step.py's written-out one, picked
by vae/train/choose_step.py) is called the same way, step(index, gen, kl_weight, progress), and draws a batch's
binarization and noise through one `Batches`, so a graphed or written-out run follows the eager run's random
stream.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

from vae.config.schema import LossConfig
from vae.data.split import Split, binarize
from vae.model.likelihoods import BERNOULLI, Likelihood
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


@dataclass(frozen=True)
class Speed:
    """How the run's step runs: train.precision, train.threads and train.compile as vae/train/speed.py resolves them
    (here, not there, because make_step takes one and speed.py times make_step's steps)."""

    bf16: bool  # the training forward pass under bf16 autocast
    threads: int  # torch's threads for the run's work on the CPU
    ms_per_step: dict[str, dict[int, float]] | None = None  # {step: {threads: ms}}: what `auto` timed
    compiled: bool = False  # the step under torch.compile
    compile_seconds: float | None = None  # what compiling took where `auto` timed it

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 else "fp32"
