"""The priors and posteriors as distributions: densities against torch.distributions, sampled KLs unbiased
against high-sample references, IWAE under a mixture prior by hand, the flow's log-determinant against
autograd's Jacobian."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributions as D

from vae.config.schema import ModelConfig
from vae.evaluate.estimators import iwae_batch
from vae.model.distributions import (
    EXP_FLOOR,
    STANDARD_NORMAL,
    DiagonalGaussian,
    GaussianMixture,
    exp_or_zero,
    latent_rate,
    logsumexp,
)
from vae.model.flow import IAF
from vae.model.vae import ACTIVATION_MODULES, build_model


def torch_mixture(p: GaussianMixture) -> D.Distribution:
    return D.MixtureSameFamily(D.Categorical(logits=p.log_weights),
                               D.Independent(D.Normal(p.mu, torch.exp(0.5 * p.logvar)), 1))


def random_mixture(K=3, L=2, seed=0, dtype=torch.float64) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture(torch.log_softmax(torch.randn(K, generator=g, dtype=dtype), 0),
                           2 * torch.randn(K, L, generator=g, dtype=dtype),
                           0.5 * torch.randn(K, L, generator=g, dtype=dtype))


def test_each_log_prob_matches_torch_distributions():
    z = torch.randn(7, 5, 2, dtype=torch.float64)
    torch.testing.assert_close(STANDARD_NORMAL.log_prob(z), D.Normal(0.0, 1.0).log_prob(z).sum(-1))
    mu, logvar = torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(DiagonalGaussian(mu, logvar).log_prob(z),
                               D.Independent(D.Normal(mu, torch.exp(0.5 * logvar)), 1).log_prob(z))
    p = random_mixture()
    torch.testing.assert_close(p.log_prob(z), torch_mixture(p).log_prob(z))


def test_exp_below_the_floor_is_zero_and_exact_above_it():
    x = torch.tensor([0.0, -10.0, EXP_FLOOR, EXP_FLOOR - 1e-3, -95.0, -1e4, -math.inf])
    expected = torch.exp(x.double()).float()
    expected[3:] = 0.0  # under e^-87 = 1.7e-38 (normal down to e^-87.34, then subnormal), or zero
    assert torch.equal(exp_or_zero(x), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logsumexp_is_torchs_to_rounding_with_its_gradient_and_infinite_rows(dtype):
    torch.manual_seed(0)
    x = torch.randn(3, 500, dtype=dtype) * 60  # most terms below e^-87 of the largest
    ours, theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
    value, reference = logsumexp(ours, 1), torch.logsumexp(theirs, 1)
    torch.testing.assert_close(value, reference, rtol=torch.finfo(dtype).eps, atol=0)
    value.sum().backward()
    # the softmax, ours zero where torch's is under 1.7e-38; exp(a) carries a's rounding, |a| eps, and |a| < 100 here
    reference.sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=100 * torch.finfo(dtype).eps, atol=1.7e-38)
    infinite = torch.tensor([[-math.inf] * 3, [math.inf, 0.0, 0.0], [-math.inf, 0.0, 0.0]], dtype=dtype)
    assert torch.equal(logsumexp(infinite, 1), torch.logsumexp(infinite, 1))


def test_a_mixture_samples_its_components_in_proportion_to_their_weights():
    p = GaussianMixture(torch.log(torch.tensor([0.2, 0.5, 0.3])), torch.tensor([[-20.0], [0.0], [20.0]]),
                        torch.zeros(3, 1))
    z = p.sample(torch.randn(60_000, 2, generator=torch.Generator().manual_seed(0)))
    nearest = (z - p.mu.T).abs().argmin(-1)  # components 20 standard deviations apart
    counts = torch.bincount(nearest, minlength=3) / len(z)
    torch.testing.assert_close(counts, torch.tensor([0.2, 0.5, 0.3]), atol=0.01, rtol=0)
    # within a component, its own Gaussian: component 1 is N(0, 1)
    assert z[nearest == 1].std().item() == pytest.approx(1.0, abs=0.02)


def mc_reference_kl(q: DiagonalGaussian, p: D.Distribution, n: int = 400_000) -> torch.Tensor:
    """KL(q || p) per example by a large float64 sample from torch.distributions: (B,)."""
    tq = D.Independent(D.Normal(q.mu.double(), torch.exp(0.5 * q.logvar.double())), 1)
    z = tq.sample((n,))
    return (tq.log_prob(z) - p.log_prob(z)).mean(0)


def assert_unbiased(kl_draws: torch.Tensor, reference: torch.Tensor):
    """The mean of independent estimates (R, B) is within 4 standard errors (and 0.02 nats) of the reference."""
    mean, se = kl_draws.double().mean(0), kl_draws.double().std(0) / math.sqrt(len(kl_draws))
    assert ((mean - reference).abs() < 4 * se + 0.02).all(), (mean, reference, se)


def test_the_sampled_kl_against_a_mixture_prior_is_unbiased():
    torch.manual_seed(0)
    p = random_mixture(K=4, L=2, dtype=torch.float32)
    q = DiagonalGaussian(torch.randn(3, 2), torch.randn(3, 2) - 1)
    eps = torch.randn(2000, 3, 2)  # 2000 independent one-sample estimates per example
    rate = latent_rate(q.mu, q.logvar, eps, q.rsample(eps), p)
    draws = -rate.log_ratio  # (2000, 3): log q - log p at each sample
    assert_unbiased(draws, mc_reference_kl(q, torch_mixture(p.double())))
    torch.testing.assert_close(rate.kl, draws.mean(0))  # the rate's KL is their mean
    assert rate.kl_dims is None  # no per-dimension KL against a mixture


def test_the_vamp_prior_is_the_mean_posterior_at_its_pseudo_inputs_and_its_kl_is_unbiased():
    torch.manual_seed(1)
    model = build_model(ModelConfig(hidden_dims=(16,), latent_dim=2, prior="vamp", prior_components=5))
    with torch.no_grad():
        model.prior.pseudo_inputs.uniform_(-0.2, 1.2)  # some pixels outside [0, 1]: the hard tanh clips them
    p = model.prior_distribution()
    mu, logvar = model.encode(model.prior.pseudo_inputs.clamp(0, 1))
    reference = D.MixtureSameFamily(D.Categorical(probs=torch.full((5,), 0.2)),
                                    D.Independent(D.Normal(mu, torch.exp(0.5 * logvar)), 1))
    z = torch.randn(50, 2)
    torch.testing.assert_close(p.log_prob(z), reference.log_prob(z))

    x = torch.rand(3, 784)
    with torch.no_grad():
        draws = -model(x, torch.randn(3000, 3, 2)).rate.log_ratio  # (3000, 3)
        q = DiagonalGaussian(*model.encode(x))
    assert_unbiased(draws, mc_reference_kl(q, D.MixtureSameFamily(
        D.Categorical(probs=torch.full((5,), 0.2, dtype=torch.float64)),
        D.Independent(D.Normal(mu.double(), torch.exp(0.5 * logvar.double())), 1))))


@pytest.mark.parametrize("prior", ["mog", "vamp"])
def test_the_mixture_priors_parameters_receive_gradient(prior):
    model = build_model(ModelConfig(hidden_dims=(16,), latent_dim=3, prior=prior, prior_components=4))
    out = model(torch.rand(8, 784), torch.randn(1, 8, 3))
    (-out.rate.log_ratio.sum()).backward()
    params = [model.prior.pseudo_inputs] if prior == "vamp" else [model.prior.logits, model.prior.mu,
                                                                  model.prior.logvar]
    for param in params:
        assert param.grad is not None and param.grad.abs().sum() > 0


def test_iwae_under_a_mixture_prior_matches_a_hand_computation():
    torch.manual_seed(2)
    model = build_model(ModelConfig(hidden_dims=(16,), latent_dim=2, prior="mog", prior_components=3)).eval()
    x = torch.bernoulli(torch.full((4, 784), 0.3))
    k, seed = 30, 7
    nll, neg_elbo = iwae_batch(model, x, k, torch.Generator().manual_seed(seed))

    eps = torch.randn((k, 4, 2), generator=torch.Generator().manual_seed(seed))  # the same draw
    with torch.no_grad():
        mu, logvar = model.encode(x)
        q = D.Independent(D.Normal(mu, torch.exp(0.5 * logvar)), 1)
        z = mu + torch.exp(0.5 * logvar) * eps
        log_px = D.Independent(D.Bernoulli(logits=model.decode(z)), 1).log_prob(x)
        log_w = (log_px + torch_mixture(model.prior_distribution()).log_prob(z) - q.log_prob(z)).double()
    torch.testing.assert_close(nll, -(torch.logsumexp(log_w, 0) - math.log(k)), rtol=0, atol=1e-3)
    torch.testing.assert_close(neg_elbo, -log_w.mean(0), rtol=0, atol=1e-3)


def test_the_flows_log_determinant_is_that_of_autograds_jacobian():
    torch.manual_seed(3)
    flow = IAF(latent=4, steps=3, hidden=8, activation=ACTIVATION_MODULES["elu"]).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.5 * torch.randn_like(p))  # away from the near-identity start
    z0, h = torch.randn(1, 4, dtype=torch.float64), torch.randn(1, 8, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda z: flow(z[None], h)[0][0], z0[0])  # (4, 4)
    _, log_abs_det = torch.linalg.slogdet(jac)
    torch.testing.assert_close(flow(z0, h)[1][0].double(), log_abs_det, rtol=1e-5, atol=1e-6)
    # each step is autoregressive, so the Jacobian of one step is triangular in its order
    step = IAF(latent=4, steps=1, hidden=8, activation=ACTIVATION_MODULES["elu"]).double()
    one = torch.autograd.functional.jacobian(lambda z: step(z[None], h)[0][0], z0[0])
    assert torch.equal(one, torch.tril(one))


def test_each_made_output_sees_only_the_dimensions_before_it_in_its_order_and_the_context():
    torch.manual_seed(5)
    flow = IAF(latent=4, steps=2, hidden=8, activation=ACTIVATION_MODULES["elu"]).double()
    z, h = torch.randn(4, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    for made, later in zip(flow.steps, (torch.tril, torch.triu)):  # orders 0..3, then 3..0
        for i in (0, 1):  # m, then the gate logits
            dz = torch.autograd.functional.jacobian(lambda z_: made(z_, h)[i], z)  # (L, L)
            assert torch.equal(dz, later(dz, diagonal=-1 if later is torch.tril else 1))  # strictly before
            assert (dz != 0).sum() == 6  # and every such dimension is used
        dh = torch.autograd.functional.jacobian(lambda h_: torch.cat(made(z, h_)), h)  # (2L, H)
        assert (dh.abs().sum(1) > 0).all()  # every output, the first in the order too, depends on h


def test_a_mixtures_log_density_under_bf16_autocast_is_the_fp32_one():
    """Narrow components make the expanded quadratic's terms large and nearly cancelling: in bf16 they
    were off by 16 nats (a VampPrior's components have logvar near -4)."""
    g = torch.Generator().manual_seed(0)
    K, L = 500, 50
    mu = torch.randn(K, L, generator=g)
    p = GaussianMixture(torch.full((K,), -math.log(K)), mu, torch.full((K, L), -4.0))
    z = mu[:250] + 0.1 * torch.randn(250, L, generator=g)
    with torch.autocast("cpu", torch.bfloat16):
        got = p.log_prob(z)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), torch_mixture(p.double()).log_prob(z.double()), rtol=0, atol=1e-2)


def test_the_flow_posteriors_log_q_is_its_density():
    """For one latent dimension, q(z|x) of the flow integrates to 1 over z, and its log_ratio is log p - log q."""
    torch.manual_seed(4)
    model = build_model(ModelConfig(hidden_dims=(16,), latent_dim=1, posterior="flow", flow_steps=2,
                                    flow_hidden=8)).double()
    with torch.no_grad():
        for p in model.flow.parameters():
            p.add_(0.3 * torch.randn_like(p))
        x = torch.rand(1, 784, dtype=torch.float64)
        eps = torch.linspace(-9, 9, 20001, dtype=torch.float64)[:, None, None]  # (S, 1, 1)
        out = model(x, eps)
        z = out.z[:, 0, 0]
        log_q = STANDARD_NORMAL.log_prob(out.z[:, 0]) - out.rate.log_ratio[:, 0]
    assert (z.diff() > 0).all()  # a one-dimensional flow is monotone
    area = torch.trapezoid(log_q.exp(), z)
    assert area.item() == pytest.approx(1.0, abs=1e-4)
