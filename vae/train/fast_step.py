"""The MLP VAE's step with its backward written out, for the CPU: an MLP encoder and decoder (ReLU or ELU), a
Gaussian q(z|x), p(z) = N(0, I) or a learned Gaussian mixture, and a Bernoulli p(x|z), trained on the ELBO or
the IWAE bound (with autograd's gradient or DReG's) in one process; in fp32, or with the products in bf16 as bf16
autocast has them (train.precision=bf16).

Autograd records some forty operations a step and runs their backward one by one, each allocating its
output; for a small model that overhead is a large part of the step. Written out, a step is its matrix
products (forward, then for each layer the weight's gradient and the input's), the elementwise work
fused where torch has a fused kernel, and the fused Adam. Under train.compile, torch.compile fuses the
elementwise work and the casts between the products too (Adam stays out: torch compiles none of its fused
kernel). EagerStep is the reference it is tested against (tests/test_fast_step.py).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vae.config.schema import Config
from vae.model.activations import ELU, elu, elu_derivative
from vae.model.distributions import EXP_FLOOR, LOG_2PI, logsumexp
from vae.model.likelihoods import Bernoulli, bernoulli_terms
from vae.model.priors import MixturePrior
from vae.model.vae import VAE
from vae.train.progress import EpochProgress
from vae.train.step import Batches, StepOptions


def fits(cfg: Config, model: VAE, processes: int, device: torch.device) -> bool:
    """Whether the run's step is the one FastStep writes out (else autograd's runs)."""
    return (cfg.train.fast_step and device.type == "cpu" and processes == 1
            and type(model) is VAE and cfg.model.arch == "mlp" and cfg.model.activation in ("relu", "elu")
            and model.flow is None and cfg.model.prior in ("normal", "mog")
            and isinstance(model.likelihood, Bernoulli) and not cfg.loss.free_bits)


class Saved(NamedTuple):
    """What an MLP's forward keeps for its backward, per layer, as its products took them."""

    inputs: list[torch.Tensor]  # each layer's input (the activations, from which ReLU's derivative follows)
    weights: list[torch.Tensor]  # in the products' dtype
    elu_inputs: list[torch.Tensor]  # the pre-activations of the hidden layers (kept under ELU only)


class NormalLogProb:
    """log N(z; 0, I) (N, L) -> (N,), and its backward."""

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.z = z
        return -0.5 * (z * z + LOG_2PI).sum(-1)

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient at z (N, L) from `grad` (N,) at log p(z)."""
        return self.z * -grad.unsqueeze(-1)


class MixtureLogProb:
    """The mixture prior's log p(z) = logsumexp_k [a_k + log N(z; mu_k, diag(1 / p_k))] (N, L) -> (N,) in fp32, as
    GaussianMixture.log_prob computes it: each component's log-density is [z^2, z] . [-p_k / 2, mu_k p_k] + c_k,
    one product for all K; its backward sets the prior's gradients from the responsibilities r (N, K), reusing the
    product's operands. (Its value through GaussianMixture.log_prob, recomputing them in the backward, left
    mnist_cpu_hour's step slower: docs/benchmarks.md.)"""

    def __init__(self, prior: MixturePrior):
        self.prior = prior

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        m = self.prior
        precision = torch.exp(-m.logvar)  # (K, L)
        weights = torch.cat([-0.5 * precision, m.mu * precision], dim=1)  # (K, 2L)
        const = F.log_softmax(m.logits, 0) - 0.5 * (m.mu * m.mu * precision + m.logvar + LOG_2PI).sum(-1)  # (K,)
        powers = torch.cat([z * z, z], dim=1)  # (N, 2L)
        log_joint = torch.addmm(const, powers, weights.t())  # (N, K): log a_k N(z; mu_k, .)
        log_p = logsumexp(log_joint, dim=1)  # (N,)
        log_r = log_joint.sub_(log_p.unsqueeze(1))  # responsibilities, exp_or_zero's in place:
        self.saved = powers, log_r.masked_fill_(log_r < EXP_FLOOR, -math.inf).exp_(), precision, weights
        return log_p

    def backward(self, grad: torch.Tensor) -> torch.Tensor:
        """Set the prior's gradients from `grad` (N,) at log p(z); returns the gradient at z (N, L)."""
        m, (powers, r, precision, weights) = self.prior, self.saved
        L = m.mu.shape[1]
        g = r.mul_(grad.unsqueeze(1))  # (N, K): at each component's log a_k N(z; mu_k, .)
        # d/dz of [z^2, z] . w_k is 2 z w_k[:L] + w_k[L:]
        at_powers = g.mm(weights)  # (N, 2L)
        dz = torch.addcmul(at_powers[:, L:], powers[:, L:], at_powers[:, :L], value=2.0)
        per_component = g.sum(0)  # (K,)
        moments = g.t().mm(powers)  # (K, 2L): sum_n g_nk z_n^2, sum_n g_nk z_n
        z2, z1 = moments[:, :L], moments[:, L:]
        mu, n = m.mu, per_component.unsqueeze(1)
        m.logits.grad = per_component - torch.softmax(m.logits, 0) * per_component.sum()
        m.mu.grad = precision * (z1 - n * mu)  # sum_n g_nk (z_n - mu_k) p_k
        m.logvar.grad = 0.5 * precision * (z2 - 2 * mu * z1 + n * mu * mu) - 0.5 * n  # of (z - mu)^2 p / 2 - 1 / 2
        return dz


class FastStep:
    """One Adam step of the training objective, its gradients computed by hand, at z = mu + sigma eps: the negative
    ELBO sum_b [-log p(x_b|z_b) + w KL(q(z|x_b) || N(0, I))] / B with the closed-form KL (k = 1, N(0, I),
    loss.gradient=standard); else -IWAE_k, -log (1/k) sum_i w_i with log w_i = log p(x|z_i) + w log p(z_i) / q(z_i|x)
    (the rate sampled), under N(0, I) or the mixture prior, with autograd's gradient or DReG's."""

    def __init__(self, model: VAE, opt: torch.optim.Optimizer, batches: Batches, options: StepOptions,
                 compile_rows: int = 0):
        self.net, self.opt, self.batches, self.options = model, opt, batches, options
        self.encoder = [m for m in model.encoder if isinstance(m, nn.Linear)]
        self.decoder = [m for m in model.decoder if isinstance(m, nn.Linear)]
        self.elu = any(isinstance(m, ELU) for m in model.encoder)
        self.latent = model.latent_dim
        self.params = list(model.parameters())
        self.master = self.params[0].dtype  # of the weights, their gradients and the loss (float32 in training)
        self.dtype = torch.bfloat16 if options.bf16 else self.master  # of the products, as under autocast
        self.mixture = isinstance(model.prior, MixturePrior)
        self.prior = MixtureLogProb(model.prior) if self.mixture else NormalLogProb()
        self.dreg = options.loss.gradient == "dreg"
        self.closed_form = options.loss.iwae_k == 1 and not self.dreg and not self.mixture
        # Batches of compile_rows examples (the full ones) take the compiled gradients; the short last one of an
        # epoch runs eagerly rather than wait for a second compile.
        self.compile_rows = compile_rows
        self.compiled = torch.compile(self.gradients) if compile_rows else None

    def __call__(self, index: torch.Tensor, gen: torch.Generator, kl_weight: float, progress: EpochProgress) -> None:
        x, eps = self.batches.draw(index, gen)  # (B, D), (B, k, L)
        progress.record(len(index), *self.step(x, eps.transpose(0, 1).contiguous(), kl_weight, 1 / len(index)))

    @torch.no_grad()
    def step(self, x: torch.Tensor, eps: torch.Tensor, kl_weight: float, scale: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adam on `scale` times the batch's objective, x (B, D), eps (k, B, L); returns the negative ELBO's summed
        nats (total, reconstruction, KL) (3,) and the sum of logvar, as EagerStep's optimizer_step does."""
        gradients = self.compiled if len(x) == self.compile_rows else self.gradients
        nats, logvar_sum = gradients(x, eps, kl_weight, scale)
        if self.options.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.options.grad_clip)
        self.opt.step()
        return nats, logvar_sum

    def gradients(self, x: torch.Tensor, eps: torch.Tensor, kl_weight: float, scale: float
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Set the parameters' gradients of `scale` times the batch's objective; returns what step() does. (The KL
        weight enters as a factor, never as an op's alpha= or value=, which torch.compile would make a constant to
        compile again for each value of a warm-up.)"""
        # Forward, keeping each layer's input.
        enc, h = self.forward(self.encoder, x)
        mu, logvar = h[:, :self.latent].to(self.master), h[:, self.latent:].to(self.master)  # (B, L) each
        std = torch.exp(0.5 * logvar)
        var = std * std
        z = torch.addcmul(mu, std, eps)  # (k, B, L)
        dec, logits = self.forward(self.decoder, z.view(-1, self.latent))
        k, B, L = z.shape
        # log p(x|z_i), with the probabilities its gradient needs: d log p(x|z) / d logits = x - sigmoid(logits).
        log_lik, probs = bernoulli_terms(logits.to(self.master).view(k, B, -1), x)  # (k, B), (k, B, D)
        recon = -log_lik.sum() / k
        if not self.mixture:  # the closed form against N(0, I), the KL reported also where the rate is sampled
            kl = 0.5 * (mu * mu + var - 1 - logvar).sum()
        if self.closed_form:
            # Backward: the ELBO's KL gives w mu at mu and w (var - 1) / 2 at logvar.
            dz = self.backward(self.decoder, dec, probs.sub_(x).mul_(scale).view(k * B, -1), input_grad=True)
            w = kl_weight * scale
            dmu = dz + w * mu
            dlogvar = dz.mul_(eps[0]).mul_(0.5 * std).add_((var - 1) * (0.5 * w))  # through z, and the KL's
        else:
            # log w_i, q(z_i|x) written through eps_i; scale * v_i, v = softmax_i log w_i, is the objective's
            # gradient at -log w_i.
            log_ratio = self.prior(z.view(k * B, L)).view(k, B) + 0.5 * (eps * eps + logvar + LOG_2PI).sum(-1)
            v = torch.softmax(log_lik + kl_weight * log_ratio, dim=0)  # (k, B)
            g = v * scale
            if self.mixture:
                kl = -log_ratio.sum() / k
            dz = self.backward(self.decoder, dec, probs.sub_(x).mul_(g.unsqueeze(-1)).view(k * B, -1), input_grad=True)
            dz = dz.add_(self.prior.backward(-kl_weight * g.view(-1))).view(k, B, L)
            if self.dreg:  # log q at z with its parameters held, and the gradient at z_i scaled by 1 - w + w v_i
                dz.sub_(eps / std * (kl_weight * g).unsqueeze(-1))
                dz.mul_((1 - kl_weight + kl_weight * v).unsqueeze(-1))
            dmu = dz.sum(0)
            dlogvar = (dz * eps).sum(0).mul_(0.5 * std)  # through z
            if not self.dreg:  # and -log q's own, w / 2 per sample
                dlogvar.sub_(g.sum(0).unsqueeze(-1) * (0.5 * kl_weight))
        self.backward(self.encoder, enc, torch.cat([dmu, dlogvar], dim=1), input_grad=False)
        return torch.stack([recon + kl, recon, kl]), logvar.sum()

    def forward(self, layers: list[nn.Linear], h: torch.Tensor) -> tuple[Saved, torch.Tensor]:
        """The MLP on h in the step's precision: what its backward needs, and the last layer's output."""
        saved = Saved([], [], [])
        for i, layer in enumerate(layers):
            h, weight = h.to(self.dtype), layer.weight.to(self.dtype)
            saved.inputs.append(h)
            saved.weights.append(weight)
            h = torch.addmm(layer.bias.to(self.dtype), h, weight.t())
            if i < len(layers) - 1 and self.elu:  # its derivative from its input: from 1 + elu(a) it cancels in bf16
                saved.elu_inputs.append(h)
                h = elu(h)
            elif i < len(layers) - 1:
                h = h.relu_()
        return saved, h

    def backward(self, layers: list[nn.Linear], saved: Saved, grad: torch.Tensor, input_grad: bool
                 ) -> torch.Tensor | None:
        """Set each layer's weight and bias gradients (in the weights' dtype) from `grad`, the gradient at the last
        layer's output; returns the gradient at the first layer's input when `input_grad` (the images need none)."""
        grad = grad.to(self.dtype)
        for i in reversed(range(len(layers))):
            layer, h = layers[i], saved.inputs[i]
            # Into last step's buffers, but not where compiled: there fresh ones are faster (docs/benchmarks.md).
            if self.compiled is None and self.dtype == self.master and layer.weight.grad is not None:
                torch.mm(grad.t(), h, out=layer.weight.grad)  # (out, in)
                torch.sum(grad, 0, out=layer.bias.grad)
            else:
                layer.weight.grad = grad.t().mm(h).to(self.master)  # (out, in)
                layer.bias.grad = grad.sum(0, dtype=self.master)
            if not (i or input_grad):
                return None
            grad = grad.mm(saved.weights[i])  # (B, in)
            if i:  # through the activation that made h
                grad = ((grad * elu_derivative(saved.elu_inputs[i - 1])).to(self.dtype) if self.elu
                        else torch.ops.aten.threshold_backward(grad, h, 0.0))
        return grad.to(self.master)
