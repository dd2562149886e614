"""ELU written as elu(x) = relu(x) + exp(min(x, 0)) - 1, its derivative exp(min(x, 0)), computed in fp32 (or
in float64 for float64).

torch's ELU goes through expm1, which on the CPU runs many times slower than exp (in fp32 and bf16 alike),
a noticeable share of mnist_cpu_hour's step (docs/benchmarks.md). exp(m) - 1 loses relative precision
only where |m| is tiny, and there by under fp32's 6e-8 of absolute error.
"""
from __future__ import annotations

import torch
from torch import nn

from vae.model.distributions import wide


def elu(x: torch.Tensor) -> torch.Tensor:
    """ELU (alpha = 1) of x, computed in fp32 (at least) and returned in x's dtype."""
    w = wide(x)
    return w.clamp(max=0).exp_().sub_(1).add_(w.clamp(min=0)).to(x.dtype)


def elu_derivative(x: torch.Tensor) -> torch.Tensor:
    """d elu / dx at x, exp(min(x, 0)), in fp32 (at least)."""
    return wide(x).clamp(max=0).exp_()


class ELUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return elu(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, = ctx.saved_tensors
        return (grad * elu_derivative(x)).to(grad.dtype)


class ELU(nn.Module):
    """nn.ELU (alpha = 1), faster on the CPU (see the module's docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ELUFunction.apply(x)
