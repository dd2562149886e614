"""The VAE: encoder q(z|x) = N(mu, diag(sigma^2)), reparameterization, Bernoulli decoder p(x|z)."""
from __future__ import annotations

import torch
from torch import nn

from vae.config import ModelConfig
from vae.conv import conv_decoder, conv_encoder
from vae.data import PIXELS


ACTIVATION_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


def mlp(sizes: list[int], activation: str = "relu") -> nn.Sequential:
    """Linear layers between consecutive sizes, the activation between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        if i:
            layers.append(ACTIVATION_MODULES[activation]())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class VAE(nn.Module):
    """Kingma & Welling (2014): MLP encoder and decoder (by default the classic example's 784-400-20),
    or convolutional ones with residual blocks (model.arch=conv)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.latent_dim = cfg.latent_dim
        # The encoder's last layer emits mu and logvar side by side: (B, 2 * latent).
        if cfg.arch == "conv":
            activation = ACTIVATION_MODULES[cfg.activation]
            self.encoder = conv_encoder(cfg.channels, cfg.res_blocks, 2 * cfg.latent_dim, activation)
            self.decoder = conv_decoder(cfg.channels, cfg.res_blocks, cfg.latent_dim, activation)
        else:
            hidden = list(cfg.hidden_dims)
            self.encoder = mlp([PIXELS, *hidden, 2 * cfg.latent_dim], cfg.activation)
            self.decoder = mlp([cfg.latent_dim, *reversed(hidden), PIXELS], cfg.activation)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 784) in [0, 1] -> mu, logvar, each (B, latent)."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps, with eps ~ N(0, I) drawn by the caller: a sample of q(z|x) that
        gradients flow through. The noise is an argument so that one seeded stream can serve a batch
        split over several processes, and so that compiled code draws no random numbers."""
        return mu + torch.exp(0.5 * logvar) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., latent) -> Bernoulli logits of p(x|z), (..., 784)."""
        return self.decoder(z.reshape(-1, self.latent_dim)).view(*z.shape[:-1], PIXELS)

    def noise(self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None):
        """eps ~ N(0, I), (n, latent): the noise of one sample of z per example."""
        return torch.randn(n, self.latent_dim, generator=generator, device=device)

    def forward(self, x: torch.Tensor, eps: torch.Tensor):
        """x (B, 784) with noise eps (B, latent), or (k, B, latent) for k samples of z per example:
        (logits (B, 784) or (k, B, 784), mu (B, latent), logvar (B, latent))."""
        mu, logvar = self.encode(x)
        return self.decode(self.reparameterize(mu, logvar, eps)), mu, logvar
