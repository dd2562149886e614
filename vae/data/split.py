"""A split of the data: its images held whole as one uint8 tensor on the training device, and binarization."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MNIST_SHAPE = (1, 28, 28)  # (C, H, W) of the MNIST-class datasets, and of checkpoints that predate other shapes


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # (N, C, H, W) uint8, on the training device
    labels: torch.Tensor  # (N,) int64, on the training device
    classes: tuple[str, ...]  # the name of each label

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])

    @property
    def dims(self) -> int:
        """Numbers per image, C * H * W: what the model sees flattened."""
        return math.prod(self.shape)

    def pixels(self, index: torch.Tensor) -> torch.Tensor:
        """Intensities in [0, 1] of the images at `index`, flattened: (B, C * H * W) float32. (index_select copies
        whole rows, several times faster than indexing.)"""
        rows = self.images.flatten(1).index_select(0, index.to(self.images.device))
        return rows.float().div_(255)

    def subset(self, index: torch.Tensor) -> Split:
        """The examples at `index`, in that order."""
        index = index.to(self.images.device)
        return Split(self.images[index], self.labels[index], self.classes)

    def binarized(self, seed: int) -> Split:
        """Each pixel drawn once as Bernoulli(intensity), with its own seeded generator (on the CPU,
        so every device gets the same images): values 0 or 255."""
        probs = self.images.cpu().float().div_(255)
        drawn = binarize(probs, torch.rand(probs.shape, generator=torch.Generator().manual_seed(seed)))
        return Split(drawn.mul_(255).to(torch.uint8).to(self.images.device), self.labels, self.classes)


def binarize(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """x ~ Bernoulli(probs) elementwise, as 1[u < p] with uniform u ~ U[0, 1) of probs' shape: the
    distribution that torch.bernoulli draws, faster on the CPU."""
    return (uniform < probs).float()
