"""Convolutional encoder and decoder with residual blocks (model.arch=conv), for images (C, H, W) whose sides
halve evenly once per stage after the first."""
from __future__ import annotations

from torch import nn

from vae.errors import UserError


class ResidualBlock(nn.Module):
    """x + f(x) with f = conv3x3 . act . conv3x3 . act, pre-activation (He et al. 2016): (B, C, H, W)."""

    def __init__(self, channels: int, activation: type[nn.Module]):
        super().__init__()
        self.f = nn.Sequential(activation(), nn.Conv2d(channels, channels, 3, padding=1),
                               activation(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x):
        return x + self.f(x)


def innermost(shape: tuple[int, int, int], stages: int) -> tuple[int, int]:
    """(H, W) at the last of `stages` stages, each after the first halving the sides; a UserError where a side
    does not halve evenly."""
    _, h, w = shape
    scale = 1 << (stages - 1)
    if h % scale or w % scale:
        raise UserError(f"model.arch=conv with {stages} stages (model.channels) halves the image's sides "
                        f"{stages - 1} times, so they must be multiples of {scale}; these images are {h}x{w}: "
                        f"set data.image_size to one, use fewer stages, or model.arch=mlp")
    return h // scale, w // scale


def conv_encoder(shape: tuple[int, int, int], channels: tuple[int, ...], blocks: int, out: int,
                 activation: type[nn.Module]) -> nn.Sequential:
    """(B, C * H * W) -> (B, out). Stage i works at sides / 2^i with channels[i] channels: a stride-2 4x4
    convolution enters it (a 3x3 one the first), `blocks` residual blocks follow."""
    h, w = innermost(shape, len(channels))
    layers: list[nn.Module] = [nn.Unflatten(1, shape), nn.Conv2d(shape[0], channels[0], 3, padding=1)]
    for i, c in enumerate(channels):
        if i:
            layers += [activation(), nn.Conv2d(channels[i - 1], c, 4, stride=2, padding=1)]  # halves the sides
        layers += [ResidualBlock(c, activation) for _ in range(blocks)]
    return nn.Sequential(*layers, activation(), nn.Flatten(), nn.Linear(channels[-1] * h * w, out))


def conv_decoder(shape: tuple[int, int, int], channels: tuple[int, ...], blocks: int, latent: int,
                 activation: type[nn.Module], params: int = 1) -> nn.Sequential:
    """(N, latent) -> (N, params * C * H * W), `params` numbers of p(x|z) per pixel, each a (C, H, W) plane: the
    encoder mirrored, with stride-2 transposed convolutions."""
    h, w = innermost(shape, len(channels))
    layers: list[nn.Module] = [nn.Linear(latent, channels[-1] * h * w), nn.Unflatten(1, (channels[-1], h, w))]
    for i in reversed(range(len(channels))):
        layers += [ResidualBlock(channels[i], activation) for _ in range(blocks)]
        if i:
            layers += [activation(), nn.ConvTranspose2d(channels[i], channels[i - 1], 4, stride=2, padding=1)]
    return nn.Sequential(*layers, activation(), nn.Conv2d(channels[0], params * shape[0], 3, padding=1), nn.Flatten())
