"""p(x|z), the likelihood of an image given its code (model.likelihood): what the decoder's output means.

One interface: `params` numbers per pixel from the decoder, laid out (..., params, D) flattened to
(..., params * D); log_prob(out, x) -> (...) summed over the D pixels, x (B, D) in [0, 1]; mean(out) ->
(..., D) in [0, 1], the picture of p(x|z); `evaluation`, the likelihood evaluate.py measures with (a density's
mass over each 8-bit level); `eight_bit`, whether that is a probability of 8-bit images only.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vae.model.distributions import LossTerms, Rate

LEVELS = 256  # 8-bit pixels: x = k / 255
LOG_SCALE_MIN = -7.0 - math.log(2)  # PixelCNN++'s floor of log s on [-1, 1], on [0, 1]
FAR_EDGE = 1e4  # the end bins' open edge: 1e4 / s_min ~ 2e7 standard units out


def bernoulli_terms(logits: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x|z) = sum_d x_d l_d - softplus(l_d) (..., B) and the probabilities sigmoid(l) (..., B, D), from
    logits (..., B, D) and x (B, D) in [0, 1] (soft x too).

    softplus(l) = relu(l) - log sigmoid(|l|) = relu(l) - log max(p, 1 - p) comes from the sigmoid that the
    gradient, x - p, needs: stable where the sigmoid saturates, and dropping only the terms under 6e-8 nats
    a pixel that float32 rounds away. On the CPU log_sigmoid and log1p run several times slower than log.
    """
    probs = torch.sigmoid(logits)
    log_lik = (x * logits).sum(-1) - logits.clamp(min=0).sum(-1) + torch.maximum(probs, 1 - probs).log_().sum(-1)
    return log_lik, probs


class BernoulliLogLikelihood(torch.autograd.Function):
    """bernoulli_terms' log p(x|z) whose backward is one fused line, (x - p) * grad, from the saved p: autograd
    through torch's cross-entropy takes over twice as long, forward and backward (docs/benchmarks.md)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        log_lik, probs = bernoulli_terms(logits, x)
        ctx.save_for_backward(probs, x)
        return log_lik

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        probs, x = ctx.saved_tensors
        return (x - probs) * grad.unsqueeze(-1), None


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) = sum_d log Bernoulli(x_d | sigmoid(l_d)): logits (..., B, D), x (B, D) -> (..., B)."""
    return BernoulliLogLikelihood.apply(logits, x)


def log_one_minus_exp(d: torch.Tensor) -> torch.Tensor:
    """log(1 - e^d) for d < 0, from exp and log (torch's expm1 is slow on the CPU, docs/benchmarks.md):
    the absolute error of 1 - e^d, fp32's 6e-8, matters only for |d| under 1e-3, a bin narrower than a thousandth
    of its logistic's scale."""
    return torch.log(-torch.expm1(d)) if d.dtype == torch.float64 else torch.log(1 - torch.exp(d))


class Bernoulli:
    """x_d ~ Bernoulli(sigmoid(l_d)): a probability of binary pixels; of grey levels only a cross-entropy."""

    params = 1
    eight_bit = False

    @property
    def evaluation(self) -> Bernoulli:
        return self

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_likelihood(out, x)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(out)


def log_cb_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """log C(lambda) of the continuous Bernoulli at lambda = sigmoid(l) (Loaiza-Ganem & Cunningham 2019):
    C = 2 artanh(1 - 2 lambda) / (1 - 2 lambda) = l / tanh(l / 2), even in l, 2 + l^2 / 6 + O(l^4) near 0."""
    a = logits.abs()
    near = a < 1e-2
    safe = torch.where(near, torch.ones_like(a), a)  # no 0 / 0 in the branch not taken (nor in its gradient)
    return torch.where(near, torch.log(2 + a.pow(2) / 6), torch.log(safe / torch.tanh(safe / 2)))


class ContinuousBernoulli:
    """x_d in [0, 1] with density C(lambda_d) lambda_d^x (1 - lambda_d)^(1 - x), lambda = sigmoid(l): a true
    density of intensities, whose nats are those of a density on [0, 1]^D (they may be negative). Trained as
    the density; evaluated as its mass over each 8-bit level's bin (`evaluation`), a probability of the images."""

    params = 1
    eight_bit = False

    @property
    def evaluation(self) -> ContinuousBernoulliBins:
        return ContinuousBernoulliBins()

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_likelihood(out, x) + log_cb_normalizer(out).sum(-1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """E[x] = lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda)) = sigmoid(l) / tanh(l / 2) - 1 / l,
        1/2 + l / 12 + O(l^3) near 0."""
        near = out.abs() < 1e-2
        safe = torch.where(near, torch.ones_like(out), out)
        return torch.where(near, 0.5 + out / 12, torch.sigmoid(safe) / torch.tanh(safe / 2) - 1 / safe)


class ContinuousBernoulliBins(ContinuousBernoulli):
    """The continuous Bernoulli's mass over each 8-bit level's bin, [x - 1/510, x + 1/510] cut to [0, 1]: a
    probability of the 256-level images, so that its nats are a code length beside the discretized logistic's.
    Of the density C(lambda) (1 - lambda) e^(l x): the mass of [a, b] is (e^(l b) - e^(l a)) / (e^l - 1), in logs
    -|l| t + log(1 - e^(-|l| (b - a))) - log(1 - e^(-|l|)) with t = 1 - b for l > 0 and a for l < 0."""

    eight_bit = True

    @property
    def evaluation(self) -> ContinuousBernoulliBins:
        return self

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        half = 0.5 / (LEVELS - 1)
        a, b = (x - half).clamp(min=0), (x + half).clamp(max=1)  # (B, D)
        m = out.abs().clamp(min=1e-6)  # at l = 0 the mass is b - a, the limit of the logs below
        t = torch.where(out > 0, 1 - b, a)
        log_mass = -m * t + torch.log(-torch.expm1(-m * (b - a))) - torch.log(-torch.expm1(-m))
        return log_mass.sum(-1)


class DiscretizedLogistic:
    """x_d in {0, 1/255, ..., 1}: a mixture of K logistics (K = 1: one), each integrated over the pixel's bin of
    width 1/255 (the end bins reach to -inf and +inf), as PixelCNN++ (Salimans et al. 2017) has it per pixel: a
    probability of the 8-bit images, so its NLL is a code length. Decoder outputs per pixel: (mu, log s), and with
    K > 1 K of each after K mixture logits."""

    def __init__(self, components: int = 1):
        self.components = components
        self.params = 2 if components == 1 else 3 * components

    eight_bit = True

    @property
    def evaluation(self) -> DiscretizedLogistic:
        return self

    def parts(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """out (..., params * D) -> mu, log s (..., K, D) and the mixture's log weights (..., K, D) (None at K = 1)."""
        K = self.components
        out = out.unflatten(-1, (self.params, -1))  # (..., params, D)
        if K == 1:
            return out[..., :1, :], out[..., 1:, :].clamp(min=LOG_SCALE_MIN), None
        logits, mu, log_s = out.split(K, dim=-2)
        return mu, log_s.clamp(min=LOG_SCALE_MIN), F.log_softmax(logits, dim=-2)

    def log_prob(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mu, log_s, log_w = self.parts(out)
        x = x.unsqueeze(-2)  # (B, 1, D)
        half = 0.5 / (LEVELS - 1)
        # The bin's edges; the end bins' open edges far enough out that their sigmoid is 1 (or 0) and their
        # gradient 0, where an infinite edge would give 0 * inf = nan.
        upper = torch.where(x >= 1, FAR_EDGE, x + half)
        lower = torch.where(x <= 0, -FAR_EDGE, x - half)
        inv_s = torch.exp(-log_s)
        upper, lower = inv_s * (upper - mu), inv_s * (lower - mu)  # standardized
        # sigma(u) - sigma(l) = sigma(u) sigma(-l) (1 - e^(l - u)): in logs, stable in both tails
        log_p = F.logsigmoid(upper) + F.logsigmoid(-lower) + log_one_minus_exp(lower - upper)
        if log_w is not None:
            log_p = torch.logsumexp(log_w + log_p, dim=-2, keepdim=True)
        return log_p.squeeze(-2).sum(-1)

    def mean(self, out: torch.Tensor) -> torch.Tensor:
        """The mixture of each logistic's centre clamped to [0, 1]: the picture of p(x|z), close to (not exactly) the
        mean of the discretized distribution."""
        mu, _, log_w = self.parts(out)
        mu = mu.clamp(0, 1)
        return mu.squeeze(-2) if log_w is None else (log_w.exp() * mu).sum(-2)


Likelihood = Bernoulli | ContinuousBernoulli | DiscretizedLogistic


def build_likelihood(name: str, components: int = 1) -> Likelihood:
    """The p(x|z) that model.likelihood names (`logistic` with model.likelihood_components)."""
    if name == "continuous_bernoulli":
        return ContinuousBernoulli()
    if name == "logistic":
        return DiscretizedLogistic(components)
    return Bernoulli()


BERNOULLI = Bernoulli()


def vae_loss(logits: torch.Tensor, x: torch.Tensor, rate: Rate, likelihood: Likelihood = BERNOULLI) -> LossTerms:
    """The negative ELBO's terms of images x (B, D) from the decoder's output (B, params * D) under `likelihood`;
    with k samples of z per example (output (k, B, params * D)) the distortion is their average."""
    recon = -likelihood.log_prob(logits, x)
    return LossTerms(recon if recon.dim() == 1 else recon.mean(0), rate.kl)
