"""The ELU of vae/model/activations.py against torch's; the gated layers by hand."""
import pytest
import torch
import torch.nn.functional as F

from vae.config.schema import ModelConfig
from vae.errors import UserError
from vae.model.activations import ELU
from vae.model.vae import mlp


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


def test_a_gated_mlp_computes_h_times_sigmoid_g_in_each_hidden_layer_by_hand():
    torch.manual_seed(0)
    net = mlp([5, 4, 3, 2], "glu")
    assert [(m.in_features, m.out_features) for m in net if isinstance(m, torch.nn.Linear)] == [(5, 8), (4, 6), (3, 2)]
    x = torch.randn(7, 5)
    h = x
    for layer in [m for m in net if isinstance(m, torch.nn.Linear)][:2]:
        out = h @ layer.weight.T + layer.bias
        h = out[:, :len(out[0]) // 2] / (1 + torch.exp(-out[:, len(out[0]) // 2:]))
    torch.testing.assert_close(net(x), h @ net[-1].weight.T + net[-1].bias)


def test_gated_layers_are_refused_where_no_mlp_carries_them():
    for fields in ({"arch": "conv"}, {"posterior": "flow"}):
        with pytest.raises(UserError, match="model.activation glu gates the MLPs' hidden layers"):
            ModelConfig(activation="glu", **fields)
