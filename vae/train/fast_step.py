"""The MLP VAE's step with its backward written out, for the CPU: an MLP encoder and decoder (ReLU or ELU), a
Gaussian q(z|x), p(z) = N(0, I) and a Bernoulli p(x|z), trained on the ELBO in one process; in fp32, or with
the products in bf16 as bf16 autocast has them (train.precision=bf16).

Autograd records some forty operations a step and runs their backward one by one, each allocating its
output; for a small model that overhead is a large part of the step. Written out, a step is its matrix
products (forward, then for each layer the weight's gradient and the input's), the elementwise work
fused where torch has a fused kernel, and the fused Adam. EagerStep is the reference it is tested against
(tests/test_fast_step.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from vae.config.schema import Config
from vae.model.activations import ELU, elu, elu_derivative
from vae.model.likelihoods import Bernoulli, bernoulli_terms
from vae.model.vae import VAE
from vae.train.progress import EpochProgress

if TYPE_CHECKING:  # step.py builds this step
    from vae.train.step import Batches, StepOptions


def fits(cfg: Config, model: VAE, processes: int, device: torch.device) -> bool:
    """Whether the run's step is the one FastStep writes out (else autograd's runs)."""
    return (cfg.train.fast_step and device.type == "cpu" and processes == 1 and not cfg.train.compile
            and type(model) is VAE and cfg.model.arch == "mlp" and cfg.model.activation in ("relu", "elu")
            and model.analytic_kl and isinstance(model.likelihood, Bernoulli)
            and cfg.loss.iwae_k == 1 and cfg.loss.gradient == "standard" and not cfg.loss.free_bits)


class Saved(NamedTuple):
    """What an MLP's forward keeps for its backward, per layer, as its products took them."""

    inputs: list[torch.Tensor]  # each layer's input (the activations, from which ReLU's derivative follows)
    weights: list[torch.Tensor]  # in the products' dtype
    elu_inputs: list[torch.Tensor]  # the pre-activations of the hidden layers (kept under ELU only)


class FastStep:
    """One Adam step of the negative ELBO, its gradients computed by hand: the value and gradients of
    sum_b [-log p(x_b|z_b) + w KL(q(z|x_b) || N(0, I))] / B at z_b = mu_b + sigma_b eps_b."""

    def __init__(self, model: VAE, opt: torch.optim.Optimizer, batches: Batches, options: StepOptions):
        self.net, self.opt, self.batches, self.options = model, opt, batches, options
        self.encoder = [m for m in model.encoder if isinstance(m, nn.Linear)]
        self.decoder = [m for m in model.decoder if isinstance(m, nn.Linear)]
        self.elu = any(isinstance(m, ELU) for m in model.encoder)
        self.latent = model.latent_dim
        self.params = list(model.parameters())
        self.master = self.params[0].dtype  # of the weights, their gradients and the loss (float32 in training)
        self.dtype = torch.bfloat16 if options.bf16 else self.master  # of the products, as under autocast

    def __call__(self, index: torch.Tensor, gen: torch.Generator, kl_weight: float, progress: EpochProgress) -> None:
        x, eps = self.batches.draw(index, gen)  # (B, D), (B, 1, L)
        progress.record(len(index), *self.step(x, eps[:, 0], kl_weight, 1 / len(index)))

    @torch.no_grad()
    def step(self, x: torch.Tensor, eps: torch.Tensor, kl_weight: float, scale: float
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Adam on `scale` times the batch's objective; returns the summed nats (total, reconstruction, KL) (3,)
        and the sum of logvar, as EagerStep's optimizer_step does."""
        # Forward, keeping each layer's input.
        enc, h = self.forward(self.encoder, x)
        mu, logvar = h[:, :self.latent].to(self.master), h[:, self.latent:].to(self.master)  # (B, L) each
        std = torch.exp(0.5 * logvar)
        var = std * std
        z = torch.addcmul(mu, std, eps)  # (B, L)
        dec, logits = self.forward(self.decoder, z)
        logits = logits.to(self.master)  # (B, D)
        # The negative ELBO's sums: the Bernoulli cross-entropy, with the probabilities its gradient needs, and
        # the analytic KL.
        log_lik, probs = bernoulli_terms(logits, x)  # (B,), (B, D)
        recon = -log_lik.sum()
        kl = 0.5 * (mu * mu + var - 1 - logvar).sum()
        # Backward: d objective / d logits = (sigmoid(l) - x) per example, times `scale`.
        grad = probs.sub_(x).mul_(scale)  # (B, D)
        dz = self.backward(self.decoder, dec, grad, input_grad=True)  # (B, L)
        w = kl_weight * scale
        dmu = torch.add(dz, mu, alpha=w)  # d/dmu of w KL = w mu
        dlogvar = dz.mul_(eps).mul_(0.5 * std).add_(var - 1, alpha=0.5 * w)  # through z, and w (var - 1) / 2
        self.backward(self.encoder, enc, torch.cat([dmu, dlogvar], dim=1), input_grad=False)
        # Adam, after clipping when asked.
        if self.options.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.options.grad_clip)
        self.opt.step()
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
            if self.dtype == self.master and layer.weight.grad is not None:  # into last step's buffers
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
