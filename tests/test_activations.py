"""The ELU of vae/model/activations.py against torch's."""
import torch
import torch.nn.functional as F

from vae.model.activations import ELU


def test_elu_is_torchs_in_value_and_gradient():
    x = torch.cat([torch.linspace(-30, 30, 601), torch.tensor([-1e-6, 0.0, 1e-6])]).requires_grad_()
    y = ELU()(x)
    torch.testing.assert_close(y, F.elu(x), rtol=0, atol=1.2e-7)  # exp(m) - 1 against expm1: fp32's rounding of 1
    grad, = torch.autograd.grad(y.sum(), x)
    expected, = torch.autograd.grad(F.elu(x).sum(), x)
    torch.testing.assert_close(grad, expected)


def test_elu_gradcheck_and_bf16():
    x = (3 * torch.randn(20, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(ELU(), (x,))
    b = torch.randn(1000).bfloat16()
    y = ELU()(b)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, F.elu(b.float()).bfloat16(), rtol=0, atol=0)  # computed in fp32, rounded once
