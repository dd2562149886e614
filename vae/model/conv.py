"""Convolutional encoder and decoder with residual blocks (model.arch=conv)."""
from __future__ import annotations

from torch import nn

SIDE = 28  # MNIST images are SIDE x SIDE


class ResidualBlock(nn.Module):
    """x + f(x) with f = conv3x3 . act . conv3x3 . act, pre-activation (He et al. 2016): (B, C, H, W)."""

    def __init__(self, channels: int, activation: type[nn.Module]):
        super().__init__()
        self.f = nn.Sequential(activation(), nn.Conv2d(channels, channels, 3, padding=1),
                               activation(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x):
        return x + self.f(x)


def conv_encoder(channels: tuple[int, ...], blocks: int, out: int, activation: type[nn.Module]) -> nn.Sequential:
    """(B, 784) -> (B, out). Stage i works at 28 / 2^i pixels a side with channels[i] channels:
    a stride-2 4x4 convolution enters it (a 3x3 one the first), `blocks` residual blocks follow."""
    layers: list[nn.Module] = [nn.Unflatten(1, (1, SIDE, SIDE)), nn.Conv2d(1, channels[0], 3, padding=1)]
    for i, c in enumerate(channels):
        if i:
            layers += [activation(), nn.Conv2d(channels[i - 1], c, 4, stride=2, padding=1)]  # halves the side
        layers += [ResidualBlock(c, activation) for _ in range(blocks)]
    side = SIDE >> (len(channels) - 1)
    return nn.Sequential(*layers, activation(), nn.Flatten(), nn.Linear(channels[-1] * side * side, out))


def conv_decoder(channels: tuple[int, ...], blocks: int, latent: int, activation: type[nn.Module]) -> nn.Sequential:
    """(N, latent) -> (N, 784) logits: the encoder mirrored, with stride-2 transposed convolutions."""
    side = SIDE >> (len(channels) - 1)
    layers: list[nn.Module] = [nn.Linear(latent, channels[-1] * side * side),
                               nn.Unflatten(1, (channels[-1], side, side))]
    for i in reversed(range(len(channels))):
        layers += [ResidualBlock(channels[i], activation) for _ in range(blocks)]
        if i:
            layers += [activation(), nn.ConvTranspose2d(channels[i], channels[i - 1], 4, stride=2, padding=1)]
    return nn.Sequential(*layers, activation(), nn.Conv2d(channels[0], 1, 3, padding=1), nn.Flatten())
