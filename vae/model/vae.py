"""The VAE: encoder q(z|x) = N(mu, diag(sigma^2)) (or a flow on it), reparameterization, Bernoulli
decoder p(x|z), a prior p(z); and its two-stochastic-layer form. Images (C, H, W) enter and leave it
flattened, D = C * H * W numbers each."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vae.config.schema import ModelConfig
from vae.data.split import MNIST_SHAPE
from vae.model.activations import ELU
from vae.model.conv import conv_decoder, conv_encoder
from vae.model.distributions import (
    DiagonalGaussian,
    Prior,
    Rate,
    gaussian_log_q,
    gaussian_rate,
    latent_rate,
    sampled_rate,
    wide,
)
from vae.model.flow import IAF
from vae.model.likelihoods import build_likelihood
from vae.model.priors import NormalPrior, build_prior

ACTIVATION_MODULES = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": ELU, "gelu": nn.GELU, "glu": nn.GLU}


def mlp(sizes: list[int], activation: str = "relu") -> nn.Sequential:
    """Linear layers between consecutive sizes, the activation between them (none after the last). Under `glu` a
    hidden layer emits 2 * size numbers (h, g), and the gate h * sigmoid(g) halves them (Dauphin et al. 2017; the
    VampPrior code's GatedDense)."""
    layers: list[nn.Module] = []
    widen = 2 if activation == "glu" else 1
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        if i:
            layers.append(ACTIVATION_MODULES[activation]())
        layers.append(nn.Linear(a, b if i == len(sizes) - 2 else widen * b))
    return nn.Sequential(*layers)


class Output(NamedTuple):
    logits: torch.Tensor  # (..., B, params * D) p(x|z)'s parameters (Bernoulli logits, ...), a row per sample of z
    mu: torch.Tensor  # (B, latent) q(z|x) = N(mu, diag(exp(logvar))) of the layer next to x (under a flow, its base)
    logvar: torch.Tensor
    rate: Rate
    z: torch.Tensor  # (..., B, latent) the samples of that layer, reparameterized: gradients flow through them


class VAE(nn.Module):
    """Kingma & Welling (2014): MLP encoder and decoder (by default the classic example's 784-400-20),
    or convolutional ones with residual blocks (model.arch=conv); the prior N(0, I), a Gaussian mixture
    or the VampPrior (model.prior); the posterior Gaussian or an inverse autoregressive flow on it."""

    def __init__(self, cfg: ModelConfig, shape: tuple[int, int, int] = MNIST_SHAPE):
        super().__init__()
        self.shape, self.latent_dim = tuple(shape), cfg.latent_dim  # shape: (C, H, W) of the images
        self.code_dim = cfg.latent_dim + (cfg.latent2_dim if cfg.skip else 0)  # the decoder's input: z1, and z2 by skip
        pixels = math.prod(shape)
        self.likelihood = build_likelihood(cfg.likelihood, cfg.likelihood_components)  # p(x|z)
        outputs = self.likelihood.params  # per pixel, from the decoder
        # The encoder's last layer emits mu and logvar side by side, then the flow's context: (B, 2 * latent + H).
        context = cfg.flow_hidden if cfg.posterior == "flow" else 0
        if cfg.arch == "conv":
            activation = ACTIVATION_MODULES[cfg.activation]
            self.encoder = conv_encoder(self.shape, cfg.channels, cfg.res_blocks, 2 * cfg.latent_dim + context,
                                        activation)
            self.decoder = conv_decoder(self.shape, cfg.channels, cfg.res_blocks, self.code_dim, activation, outputs)
        else:
            hidden = list(cfg.hidden_dims)
            self.encoder = mlp([pixels, *hidden, 2 * cfg.latent_dim + context], cfg.activation)
            self.decoder = mlp([self.code_dim, *reversed(hidden), outputs * pixels], cfg.activation)
        self.flow = (IAF(cfg.latent_dim, cfg.flow_steps, cfg.flow_hidden, ACTIVATION_MODULES[cfg.activation])
                     if context else None)
        self.prior = build_prior(cfg.prior, cfg.prior_components, cfg.latent2_dim or cfg.latent_dim, pixels)

    @property
    def noise_dim(self) -> int:
        """Standard normal numbers that one sample of the latents from q(z|x) takes."""
        return self.latent_dim

    @property
    def prior_noise_dim(self) -> int:
        """Standard normal numbers that one draw of the latents from the prior takes (generate's noise)."""
        return self.noise_dim + self.prior.extra_noise

    @property
    def learned_prior(self) -> bool:
        """Whether p(z) is learned (mog, vamp), which leaves the scale of z free, or N(0, I)."""
        return not isinstance(self.prior, NormalPrior)

    @property
    def analytic_kl(self) -> bool:
        """Whether the rate is the closed-form KL (a Gaussian posterior against N(0, I)), not a sampled one."""
        return self.flow is None and not self.learned_prior

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, D) in [0, 1] -> mu, logvar (B, latent) of q(z|x) (under a flow, of its base Gaussian), and
        the flow's context (B, flow_hidden; empty without a flow): the encoder's output, split."""
        out, L = self.encoder(x), self.latent_dim
        return out[..., :L], out[..., L:2 * L], out[..., 2 * L:]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, D) in [0, 1] -> mu, logvar, each (B, latent) (under a flow, of its base Gaussian)."""
        return self.posterior(x)[:2]

    def top_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, logvar of the top stochastic layer at x (B, D): what the VampPrior is a mixture of."""
        return self.encode(x)

    def prior_distribution(self) -> Prior:
        """p(z) of the top layer, as a distribution: at inference the VampPrior is this Gaussian mixture."""
        return self.prior(self.top_posterior)

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps, with eps ~ N(0, I) drawn by the caller: a sample of q(z|x) that
        gradients flow through. The noise is an argument so that one seeded stream can serve a batch
        split over several processes, and so that compiled code draws no random numbers. In fp32 (or wider)
        also under bf16 autocast, so that z is the sample the rate is measured at."""
        return DiagonalGaussian(wide(mu), wide(logvar)).rsample(eps)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (..., code_dim) -> the parameters of p(x|z) (Bernoulli logits, ...): (..., params * D)."""
        out = self.decoder(z.reshape(-1, self.code_dim))
        return out.view(*z.shape[:-1], out.shape[-1])

    def means(self, logits: torch.Tensor) -> torch.Tensor:
        """The decoder's output (..., params * D) -> the means of p(x|z) as images (..., C, H, W) in [0, 1]: what
        pictures show."""
        return self.likelihood.mean(logits).view(*logits.shape[:-1], *self.shape)

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """The point of z each image (B, D) is drawn and decoded at: the posterior mean, or under a flow
        the flow's image of its base mean (eps = 0). (B, code_dim)"""
        mu, _, context = self.posterior(x)
        return mu if self.flow is None else self.flow(mu.float(), context)[0]

    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        """Logits of p(x|z) for z drawn from the prior with `noise` (n, prior_noise_dim)."""
        return self.decode(self.prior_distribution().sample(noise))

    def noise(self, n: int, generator: torch.Generator | None = None, device: torch.device | None = None):
        """eps ~ N(0, I), (n, noise_dim): the noise of one sample of the latents per example."""
        return torch.randn(n, self.noise_dim, generator=generator, device=device)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> Output:
        """x (B, D) with noise eps (B, latent), or (k, B, latent) for k samples of z per example."""
        if self.analytic_kl:
            mu, logvar = self.encode(x)
            z = self.reparameterize(mu, logvar, eps)
            return Output(self.decode(z), mu, logvar, gaussian_rate(wide(mu), wide(logvar), eps, z), z)
        mu, logvar, context = self.posterior(x)
        z = self.reparameterize(mu, logvar, eps)
        log_q = gaussian_log_q(eps, wide(logvar))  # (..., B)
        if self.flow is not None:
            z, log_det = self.flow(z, context)
            log_q = log_q - log_det
        return Output(self.decode(z), mu, logvar, sampled_rate(log_q, self.prior_distribution().log_prob(z)), z)


class TwoLayerVAE(VAE):
    """Two stochastic layers (Burda et al. 2015): q(z1|x) q(z2|z1) and p(z2) p(z1|z2) p(x|z1), or p(x|z1, z2)
    under model.skip (the VampPrior code's hierarchical VAE).

    The networks between x and z1 are the one-layer VAE's; MLPs of model.hidden2_dims join z1 and
    z2, each way. The rate of z2 is analytic given z1 under p(z2) = N(0, I), else sampled; that of z1,
    against a prior that depends on z2, has no closed form and is a single-sample estimate.
    """

    # The log-variances of q(z2|.) and p(z1|z2) are clamped to this range, as the VampPrior code's HVAE clips them
    # (hardtanh). Unbounded, q(z2|x) gave one image of a batch a log-variance of 69 in an hour's training of the
    # ladder, a z2 of 1e15 and a non-finite KL against the mixture prior.
    LOGVAR_BOUNDS = (-6.0, 2.0)

    def __init__(self, cfg: ModelConfig, shape: tuple[int, int, int] = MNIST_SHAPE):
        super().__init__(cfg, shape)
        self.latent2_dim, self.skip = cfg.latent2_dim, cfg.skip
        hidden2 = list(cfg.hidden2_dims)
        self.encoder2 = mlp([cfg.latent_dim, *hidden2, 2 * cfg.latent2_dim], cfg.activation)  # q(z2|z1)
        self.prior1 = mlp([cfg.latent2_dim, *reversed(hidden2), 2 * cfg.latent_dim], cfg.activation)  # p(z1|z2)

    @property
    def noise_dim(self) -> int:
        return self.latent_dim + self.latent2_dim

    def conditional_prior(self, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, logvar (..., B, latent) of p(z1|z2) at z2 (..., B, latent2), the log-variance clamped."""
        mu_p, logvar_p = self.prior1(z2).chunk(2, dim=-1)
        return mu_p, logvar_p.clamp(*self.LOGVAR_BOUNDS)

    def top_gaussian(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, logvar (..., B, latent2) of q(z2|.) from encoder2's input h (z1 bottom-up, the encoder's output
        top-down), the log-variance clamped."""
        mu2, logvar2 = self.encoder2(h).chunk(2, dim=-1)
        return mu2, logvar2.clamp(*self.LOGVAR_BOUNDS)

    def top_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z2|z1) at z1 = the mean of q(z1|x): the VampPrior's components with two layers."""
        return self.top_gaussian(self.encode(x)[0])

    def top_moments(self, x: torch.Tensor, eps1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and log-variance (B, latent2) of z2 under q(z2|x) = E_{z1 ~ q(z1|x)}[q(z2|z1)], over the samples
        of z1 that the noise eps1 (S, B, L1) makes: Var = E[sigma2^2(z1)] + Var[mu2(z1)]."""
        mu1, logvar1 = self.encode(x)
        mu2, logvar2 = (t.float() for t in self.top_gaussian(self.reparameterize(mu1, logvar1, eps1)))
        return mu2.mean(0), torch.log(logvar2.exp().mean(0) + mu2.var(0, unbiased=False))

    def decoder_input(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """What the decoder reads of z1 (..., B, L1) and z2 (..., B, L2): z1, or (z1, z2) under model.skip."""
        return torch.cat([z1, z2.to(z1.dtype)], dim=-1) if self.skip else z1

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of q(z1|x), and under model.skip beside it that of q(z2|z1) at it."""
        mu1 = self.encode(x)[0]
        return self.decoder_input(mu1, self.top_gaussian(mu1)[0]) if self.skip else mu1

    def generate(self, noise: torch.Tensor) -> torch.Tensor:
        """Ancestral sampling: z2 ~ p(z2), then z1 ~ p(z1|z2), then the logits of p(x|z1) (p(x|z1, z2) by skip)."""
        e1, top = noise.split([self.latent_dim, noise.shape[-1] - self.latent_dim], dim=-1)
        z2 = self.prior_distribution().sample(top)
        mu_p, logvar_p = self.conditional_prior(z2)
        return self.decode(self.decoder_input(self.reparameterize(mu_p, logvar_p, e1), z2))

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> Output:
        """x (B, D) with noise eps (..., B, latent + latent2): that of z1, then that of z2."""
        e1, e2 = eps.split([self.latent_dim, self.latent2_dim], dim=-1)
        mu1, logvar1 = self.encode(x)
        z1 = self.reparameterize(mu1, logvar1, e1)  # (..., B, L1)
        mu2, logvar2 = self.top_gaussian(z1)  # q(z2|z1)
        z2 = self.reparameterize(mu2, logvar2, e2)  # (..., B, L2)
        mu_p, logvar_p = self.conditional_prior(z2)
        z1, logvar1, mu_p, logvar_p = z1.float(), logvar1.float(), mu_p.float(), logvar_p.float()
        # z1: log q(z1|x) - log p(z1|z2) per dimension, at the sample (the 2 pi terms cancel)
        bottom = 0.5 * ((z1 - mu_p).pow(2) * torch.exp(-logvar_p) + logvar_p - e1.pow(2) - logvar1)
        top = latent_rate(mu2.float(), logvar2.float(), e2, z2, self.prior_distribution())  # z2 given z1
        log_ratio = top.log_ratio - bottom.sum(-1)  # (..., B)
        logits = self.decode(self.decoder_input(z1, z2))
        if top.kl_dims is None:
            bottom_kl = bottom.sum(-1).reshape(-1, len(x)).mean(0)
            return Output(logits, mu1, logvar1, Rate(bottom_kl + top.kl, log_ratio, kl_top=top.kl), z1)
        kl_dims = torch.cat([bottom, top.kl_dims], dim=-1)  # (..., B, L1 + L2)
        kl_dims = kl_dims.reshape(-1, *kl_dims.shape[-2:]).mean(0)
        rate = Rate(kl_dims.sum(-1), log_ratio, kl_dims, kl_dims[:, self.latent_dim:].sum(-1))
        return Output(logits, mu1, logvar1, rate, z1)


class LadderVAE(TwoLayerVAE):
    """Two stochastic layers inferred top-down (Sønderby et al. 2016's ladder VAE): q(z2|x), then
    q(z1|x, z2), whose Gaussian is the precision-weighted merge of the encoder's N(mu^, var^) with the
    generative model's own p(z1|z2). The generative model is TwoLayerVAE's: p(z2) p(z1|z2) p(x|z1) (p(x|z1, z2) under
    model.skip).

    A deterministic bottom-up pass gives both layers' evidence: the encoder's output (mu^, logvar^) of z1, and
    from it, through the MLP of model.hidden2_dims, q(z2|x). Given z2 both q(z1|x, z2) and p(z1|z2) are diagonal
    Gaussians, so z1's rate is their analytic KL (at the sample of z2), not a one-sample estimate.
    """

    def __init__(self, cfg: ModelConfig, shape: tuple[int, int, int] = MNIST_SHAPE):
        super().__init__(cfg, shape)
        self.encoder2 = mlp([2 * cfg.latent_dim, *cfg.hidden2_dims, 2 * cfg.latent2_dim], cfg.activation)  # q(z2|x)

    def top_posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, logvar (B, latent2) of q(z2|x)."""
        return self.top_gaussian(self.encoder(x))

    def top_moments(self, x: torch.Tensor, eps1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.top_posterior(x)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q(z1|x, z2) at z2 = the mean of q(z2|x) (no flow context): what an image is coded and drawn as."""
        mu, logvar = self.encode(x)
        return mu, logvar, mu[..., :0]

    def bottom_posterior(self, evidence: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q(z1|x, z2), p(z1|z2) and the encoder's N(mu^, var^): mu, logvar of each, (..., B, latent), from the
        encoder's output (B, 2 * latent) and z2 (..., B, latent2). 1/var_q = 1/var^ + 1/var_p; mu_q = var_q (mu^/var^
        + mu_p/var_p)."""
        mu_hat, logvar_hat = evidence.float().chunk(2, dim=-1)
        mu_p, logvar_p = (t.float() for t in self.conditional_prior(z2))
        logvar_q = -torch.logaddexp(-logvar_hat, -logvar_p)
        mu_q = mu_hat * torch.sigmoid(logvar_p - logvar_hat) + mu_p * torch.sigmoid(logvar_hat - logvar_p)
        return mu_q, logvar_q, mu_p, logvar_p, mu_hat, logvar_hat

    @staticmethod
    def bottom_rate(e1: torch.Tensor, mu_q, logvar_q, mu_p, logvar_p, mu_hat, logvar_hat) -> tuple[torch.Tensor, ...]:
        """KL(q(z1|x, z2) || p(z1|z2)) per dimension, and log p(z1|z2) - log q(z1|x, z2) at z1 = mu_q + sigma_q e1,
        each (..., B, latent), with no exp() of -logvar_p, so that it holds at any log-variance: where p(z1|z2) is
        narrow, (mu_q - mu_p)^2 / var_p = (mu^ - mu_p)^2 sigmoid(logvar_p - logvar^)^2 / var_p stays small."""
        # (mu_q - mu_p) / sd_p
        scaled_gap = (mu_hat - mu_p) * torch.exp(F.logsigmoid(logvar_p - logvar_hat) - 0.5 * logvar_p)
        sd_ratio = torch.exp(0.5 * (logvar_q - logvar_p))  # sd_q / sd_p <= 1 (not a sqrt, whose gradient at 0 is inf)
        kl = 0.5 * (sd_ratio.pow(2) + scaled_gap.pow(2) + logvar_p - logvar_q - 1)
        log_ratio = -0.5 * ((scaled_gap + sd_ratio * e1).pow(2) + logvar_p - e1.pow(2) - logvar_q)
        return kl, log_ratio

    def at_top_mean(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """mu, logvar (B, latent) of q(z1|x, z2) at z2 = the mean of q(z2|x), and that mean (B, latent2)."""
        evidence = self.encoder(x)
        mu2 = self.top_gaussian(evidence)[0]
        return *self.bottom_posterior(evidence, mu2)[:2], mu2

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu, logvar (B, latent) of q(z1|x, z2) at z2 = the mean of q(z2|x): the code of each image."""
        return self.at_top_mean(x)[:2]

    def code(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of q(z1|x, z2) at z2 = the mean of q(z2|x), and under model.skip that mean beside it."""
        mu1, _, mu2 = self.at_top_mean(x)
        return self.decoder_input(mu1, mu2)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> Output:
        """x (B, D) with noise eps (..., B, latent + latent2): that of z1, then that of z2."""
        e1, e2 = eps.split([self.latent_dim, self.latent2_dim], dim=-1)
        evidence = self.encoder(x)  # (B, 2 * L1)
        mu2, logvar2 = self.top_gaussian(evidence)  # q(z2|x)
        z2 = self.reparameterize(mu2, logvar2, e2)  # (..., B, L2)
        gaussians = self.bottom_posterior(evidence, z2)  # q(z1|x, z2), p(z1|z2), the encoder's: (..., B, L1) each
        mu1, logvar1 = gaussians[:2]
        z1 = self.reparameterize(mu1, logvar1, e1)
        bottom_kl, bottom_log_ratio = self.bottom_rate(e1, *gaussians)
        top = latent_rate(mu2.float(), logvar2.float(), e2, z2, self.prior_distribution())
        log_ratio = top.log_ratio + bottom_log_ratio.sum(-1)  # (..., B)
        bottom_kl = bottom_kl.reshape(-1, *bottom_kl.shape[-2:]).mean(0)  # (B, L1), over the samples of z2
        code_mu, code_logvar = self.bottom_posterior(evidence, mu2)[:2]
        if top.kl_dims is None:
            rate = Rate(bottom_kl.sum(-1) + top.kl, log_ratio, kl_top=top.kl)
        else:
            kl_dims = torch.cat([bottom_kl, top.kl_dims], dim=-1)  # (B, L1 + L2)
            rate = Rate(kl_dims.sum(-1), log_ratio, kl_dims, top.kl)
        return Output(self.decode(self.decoder_input(z1, z2)), code_mu, code_logvar, rate, z1)


def build_model(cfg: ModelConfig, shape: tuple[int, int, int] = MNIST_SHAPE) -> VAE:
    """The VAE that model.* describes for images of `shape` (C, H, W): one stochastic layer, or two when
    model.latent2_dim > 0, inferred bottom-up or top-down (model.inference)."""
    if not cfg.latent2_dim:
        return VAE(cfg, shape)
    return LadderVAE(cfg, shape) if cfg.inference == "top_down" else TwoLayerVAE(cfg, shape)


@torch.no_grad()
def init_output_bias(model: VAE, pixel_means: torch.Tensor) -> None:
    """Set the decoder's last bias to logit(mean of each training pixel) (D,), clamped to [1e-3, 1 - 1e-3]:
    before training, p(x|z) is then the data's pixel marginals, not a coin flip per pixel."""
    model.decoder[-1].bias.copy_(torch.logit(pixel_means.clamp(1e-3, 1 - 1e-3)))
