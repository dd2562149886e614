"""The VAE: encoder q(z|x) = N(mu, diag(sigma^2)), reparameterization, Bernoulli decoder p(x|z);
and its two-stochastic-layer form."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from vae.config.schema import ModelConfig
from vae.data.split import PIXELS
from vae.model.conv import conv_decoder, conv_encoder
from vae.model.distributions import Rate, gaussian_rate

ACTIVATION_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "gelu": nn.GELU}


def mlp(sizes: list[int], activation: str = "relu") -> nn.Sequential:
    """Linear layers between consecutive sizes, the activation between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        if i:
            layers.append(ACTIVATION_MODULES[activation]())
        layers.append(nn.Linear(a, b))
    return nn.Sequential(*layers)


class Output(NamedTuple):
    logits: torch.Tensor  # (..., B, 784) Bernoulli logits of p(x|z), one row per sample of z
    mu: torch.Tensor  # (B, latent) q(z|x) = N(mu, diag(exp(logvar))) of the layer next to x
    logvar: torch.Tensor
    rate: Rate
    z: torch.Tensor  # (..., B, latent) the samples of that layer, reparameterized: gradients flow through them


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

    @property
    def noise_dim(self) -> int:
        """Standard normal numbers that one sample of the latents takes."""
        return self.latent_dim

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 784) in [0, 1] -> mu, logvar, each (B, latent)."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps, with eps ~ N(0, I) drawn by the caller: a sample of q(z|x) that
        gradients flow through. The noise is an argument so that one seeded stream can serve a batch
        split over several processes, and so that compiled code draws no random numbers. In fp32
        also under bf16 autocast, so that z is the sample the rate is measured at."""
        return mu.float() + torch.exp(0.5 * logvar.float()) * eps

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., latent) -> Bernoulli logits of p(x|z), (..., 784)."""
        return self.decoder(z.reshape(-1, self.latent_dim)).view(*z.shape[:-1], PIXELS)

    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        """Logits of p(x|z) for z drawn from the prior with `noise` (n, noise_dim)."""
        return self.decode(noise)

    def noise(self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None):
        """eps ~ N(0, I), (n, noise_dim): the noise of one sample of the latents per example."""
        return torch.randn(n, self.noise_dim, generator=generator, device=device)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> Output:
        """x (B, 784) with noise eps (B, latent), or (k, B, latent) for k samples of z per example."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, eps)
        return Output(self.decode(z), mu, logvar, gaussian_rate(mu.float(), logvar.float(), eps, z), z)


class TwoLayerVAE(VAE):
    """Two stochastic layers (Burda et al. 2015): q(z1|x) q(z2|z1) and p(z2) p(z1|z2) p(x|z1).

    The networks between x and z1 are the one-layer VAE's; MLPs of model.hidden2_dims join z1 and
    z2, each way. The rate of z2 is analytic given z1; that of z1, against a prior that depends
    on z2, has no closed form and is a single-sample estimate.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.latent2_dim = cfg.latent2_dim
        hidden2 = list(cfg.hidden2_dims)
        self.encoder2 = mlp([cfg.latent_dim, *hidden2, 2 * cfg.latent2_dim], cfg.activation)  # q(z2|z1)
        self.prior1 = mlp([cfg.latent2_dim, *reversed(hidden2), 2 * cfg.latent_dim], cfg.activation)  # p(z1|z2)

    @property
    def noise_dim(self) -> int:
        return self.latent_dim + self.latent2_dim

    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        """Ancestral sampling: z2 ~ N(0, I), then z1 ~ p(z1|z2), then the logits of p(x|z1)."""
        e1, z2 = noise.split([self.latent_dim, self.latent2_dim], dim=-1)
        mu_p, logvar_p = self.prior1(z2).chunk(2, dim=-1)
        return self.decode(self.reparameterize(mu_p, logvar_p, e1))

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> Output:
        """x (B, 784) with noise eps (..., B, latent + latent2): that of z1, then that of z2."""
        e1, e2 = eps.split([self.latent_dim, self.latent2_dim], dim=-1)
        mu1, logvar1 = self.encode(x)
        z1 = self.reparameterize(mu1, logvar1, e1)  # (..., B, L1)
        mu2, logvar2 = self.encoder2(z1).chunk(2, dim=-1)  # q(z2|z1)
        z2 = self.reparameterize(mu2, logvar2, e2)  # (..., B, L2)
        mu_p, logvar_p = self.prior1(z2).chunk(2, dim=-1)  # p(z1|z2)
        z1, logvar1, mu_p, logvar_p = z1.float(), logvar1.float(), mu_p.float(), logvar_p.float()
        # z1: log q(z1|x) - log p(z1|z2) per dimension, at the sample (the 2 pi terms cancel)
        bottom = 0.5 * ((z1 - mu_p).pow(2) * torch.exp(-logvar_p) + logvar_p - e1.pow(2) - logvar1)
        top = gaussian_rate(mu2.float(), logvar2.float(), e2, z2)  # z2 given z1: analytic
        kl_dims = torch.cat([bottom, top.kl_dims], dim=-1)  # (..., B, L1 + L2)
        rate = Rate(kl_dims.reshape(-1, *kl_dims.shape[-2:]).mean(0), top.log_ratio - bottom.sum(-1))
        return Output(self.decode(z1), mu1, logvar1, rate, z1)


def build_model(cfg: ModelConfig) -> VAE:
    """The VAE that model.* describes: one stochastic layer, or two when model.latent2_dim > 0."""
    return TwoLayerVAE(cfg) if cfg.latent2_dim else VAE(cfg)


@torch.no_grad()
def init_output_bias(model: VAE, pixel_means: torch.Tensor) -> None:
    """Set the decoder's last bias to logit(mean of each training pixel) (784,), clamped to [1e-3, 1 - 1e-3]:
    before training, p(x|z) is then the data's pixel marginals, not a coin flip per pixel."""
    model.decoder[-1].bias.copy_(torch.logit(pixel_means.clamp(1e-3, 1 - 1e-3)))
