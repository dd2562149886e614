"""The likelihoods p(x|z) against independent references: torch.distributions' Bernoulli and continuous
Bernoulli, and a discretized logistic built from torch.distributions' logistic CDF; the 256 probabilities of a
pixel sum to 1; IWAE under a logistic by hand; each likelihood trained, evaluated and drawn."""
from __future__ import annotations

import math

import pytest
import torch
import torch.distributions as D

from vae import load
from vae.config.load import load_config
from vae.config.schema import Config, DataConfig, ModelConfig, OutputConfig, TrainConfig
from vae.errors import UserError
from vae.evaluate.analyze import evaluate_checkpoint
from vae.evaluate.estimators import iwae_batch
from vae.model.likelihoods import (
    LOG_SCALE_MIN,
    Bernoulli,
    ContinuousBernoulli,
    ContinuousBernoulliBins,
    DiscretizedLogistic,
    log_one_minus_exp,
)
from vae.model.vae import build_model
from vae.train.loop import train

G = torch.Generator().manual_seed(0)


def logistic_cdf(mu, s):
    """torch.distributions' logistic: the inverse sigmoid of a uniform, scaled and shifted."""
    return D.TransformedDistribution(D.Uniform(torch.zeros_like(mu), torch.ones_like(mu)),
                                     [D.SigmoidTransform().inv, D.AffineTransform(mu, s)]).cdf


def test_bernoulli_is_torch_distributions():
    logits, x = 3 * torch.randn(4, 5, 30, generator=G, dtype=torch.float64), torch.rand(5, 30, generator=G) < 0.4
    x = x.double()
    expected = D.Bernoulli(logits=logits).log_prob(x.expand_as(logits)).sum(-1)
    torch.testing.assert_close(Bernoulli().log_prob(logits, x), expected)
    torch.testing.assert_close(Bernoulli().mean(logits), torch.sigmoid(logits))


def test_the_bernoulli_log_likelihood_and_its_gradient_hold_where_the_sigmoid_saturates():
    logits = torch.tensor([[-80.0, -20.0, -3.0, 0.0, 2.5, 20.0, 80.0]], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[0.0, 1.0, 0.3, 1.0, 0.0, 0.0, 1.0]], dtype=torch.float64)  # soft targets too
    value = Bernoulli().log_prob(logits, x)
    expected = (x * logits - torch.nn.functional.softplus(logits)).sum(-1)  # -(binary cross-entropy), by hand
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    grad, = torch.autograd.grad(value.sum(), logits)
    torch.testing.assert_close(grad, x - torch.sigmoid(logits.detach()))
    assert torch.autograd.gradcheck(lambda logit: Bernoulli().log_prob(logit, x), (logits,))
    samples = (3 * torch.randn(2, 4, 7, dtype=torch.float64)).requires_grad_()  # k samples of z: (k, B, D)
    soft = torch.rand(4, 7, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda logit: Bernoulli().log_prob(logit, soft), (samples,))


@pytest.mark.parametrize("scale", [0.001, 0.1, 3.0, 10.0])  # logits near 0 (the series) to |l| ~ 30
def test_continuous_bernoulli_is_torch_distributions(scale):
    logits = scale * torch.randn(3, 4, 50, generator=G, dtype=torch.float64)
    x = torch.rand(4, 50, generator=G, dtype=torch.float64)
    x[:, :5] = 0.0
    x[:, 5:10] = 1.0
    cb = D.ContinuousBernoulli(logits=logits)
    # (torch computes the normalizer from probs: 1 - p loses digits as l grows, 3e-5 nats at l = 30)
    torch.testing.assert_close(ContinuousBernoulli().log_prob(logits, x), cb.log_prob(x.expand_as(logits)).sum(-1),
                               rtol=1e-7, atol=1e-3)
    torch.testing.assert_close(ContinuousBernoulli().mean(logits), cb.mean, atol=1e-5, rtol=1e-5)


def test_the_continuous_bernoulli_density_integrates_to_1_also_where_torch_loses_digits():
    logits = torch.tensor([-80.0, -40.0, -3.0, -1e-4, 0.0, 2e-3, 5.0, 40.0, 80.0], dtype=torch.float64,
                          requires_grad=True)
    y = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000  # midpoints of [0, 1]
    density = torch.stack([ContinuousBernoulli().log_prob(logit.expand(len(y), 1), y[:, None]).exp()
                           for logit in logits.detach()])
    torch.testing.assert_close(density.mean(-1), torch.ones(len(logits), dtype=torch.float64), atol=1e-6, rtol=0)
    x = torch.full((1, len(logits)), 0.3, dtype=torch.float64)
    ContinuousBernoulli().log_prob(logits[None], x).sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("logit", [-60.0, -7.0, -0.5, 0.0, 1e-7, 0.3, 4.0, 60.0])
def test_the_continuous_bernoulli_binned_is_its_cdf_over_each_8_bit_level_and_sums_to_1(logit):
    levels = (torch.arange(256, dtype=torch.float64) / 255)[:, None]  # (256, 1): every value of one pixel
    out = torch.full((256, 1), logit, dtype=torch.float64)
    p = ContinuousBernoulliBins().log_prob(out, levels).exp()
    torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert bool((p > 0).all())
    if abs(logit) < 10:  # torch's CDF from probs loses digits where lambda nears 0 or 1
        cb = D.ContinuousBernoulli(logits=torch.tensor(logit if logit else 1e-9, dtype=torch.float64))
        midpoints = (torch.arange(255, dtype=torch.float64) + 0.5) / 255
        edges = torch.cat([torch.zeros(1, dtype=torch.float64), midpoints, torch.ones(1, dtype=torch.float64)])
        torch.testing.assert_close(p, torch.diff(cb.cdf(edges)), atol=1e-9, rtol=1e-6)


def test_evaluation_measures_the_continuous_bernoulli_by_bins_and_the_others_as_trained():
    assert isinstance(ContinuousBernoulli().evaluation, ContinuousBernoulliBins)
    for likelihood in (Bernoulli(), DiscretizedLogistic(3), ContinuousBernoulliBins()):
        assert likelihood.evaluation is likelihood
    # a bin's mass is about the density times the bin's width where the density is smooth
    logits, x = torch.tensor([[0.7, -2.0]], dtype=torch.float64), torch.tensor([[100 / 255, 30 / 255]]).double()
    torch.testing.assert_close(ContinuousBernoulliBins().log_prob(logits, x),
                               ContinuousBernoulli().log_prob(logits, x) - 2 * math.log(255), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # float32: the training's formulas
@pytest.mark.parametrize("components", [1, 3])
def test_the_256_probabilities_of_a_discretized_logistic_pixel_sum_to_1(components, dtype):
    logistic = DiscretizedLogistic(components)
    for seed in range(5):  # one pixel's decoder outputs, against every value it can take
        out = 2 * torch.randn(logistic.params, generator=torch.Generator().manual_seed(seed), dtype=dtype)
        levels = (torch.arange(256, dtype=dtype) / 255)[:, None]  # (256, 1): 256 one-pixel images
        p = logistic.log_prob(out, levels).exp()
        assert p.shape == (256,) and bool((p > 0).all())
        atol = 1e-12 if dtype == torch.float64 else 2e-5
        torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=dtype), rtol=0, atol=atol)


def test_log_one_minus_exp_in_float32_holds_to_its_stated_error():
    d = -torch.logspace(-3, 2, 200, dtype=torch.float64)  # bins from a thousandth of a scale to 100 scales wide
    exact = torch.log(-torch.expm1(d))
    assert (log_one_minus_exp(d.float()).double() - exact).abs().max() < 1e-4  # 6e-8 / |d| at |d| = 1e-3
    torch.testing.assert_close(log_one_minus_exp(d), exact, rtol=0, atol=0)  # float64: expm1 itself


def test_the_discretized_logistic_is_the_logistic_cdf_over_each_bin():
    mu = torch.tensor([0.0, 0.3, 0.5, 1.0, 0.7], dtype=torch.float64)
    log_s = torch.tensor([-2.0, -4.0, -1.0, -3.0, -6.0], dtype=torch.float64)
    x = torch.tensor([0.0, 77 / 255, 128 / 255, 1.0, 180 / 255], dtype=torch.float64)
    cdf = logistic_cdf(mu, log_s.exp())
    upper = torch.where(x >= 1, torch.ones_like(x), cdf(x + 0.5 / 255))
    lower = torch.where(x <= 0, torch.zeros_like(x), cdf(x - 0.5 / 255))
    expected = torch.log(upper - lower).sum()
    got = DiscretizedLogistic(1).log_prob(torch.cat([mu, log_s]), x)
    torch.testing.assert_close(got, expected)


def test_the_discretized_logistic_has_finite_gradients_at_the_end_bins_and_far_in_the_tails():
    # fp32 as training runs it: the end bins' open edges, the scale at its floor, centres far from the pixel
    mu = torch.tensor([[0.0, 1.0, 0.5, -3.0, 4.0, 0.2]], requires_grad=True)
    log_s = torch.tensor([[LOG_SCALE_MIN, LOG_SCALE_MIN, -9.0, 0.0, LOG_SCALE_MIN, 3.0]], requires_grad=True)
    x = torch.tensor([[0.0, 1.0, 0.0, 1.0, 128 / 255, 1.0]])
    log_p = DiscretizedLogistic(1).log_prob(torch.cat([mu, log_s], -1), x)
    log_p.backward()
    assert torch.isfinite(log_p).all() and torch.isfinite(mu.grad).all() and torch.isfinite(log_s.grad).all()
    assert log_p.item() < 0 and mu.grad[0, 0] < 0 < mu.grad[0, 3]  # pulled toward the pixel from either side


def test_a_logistic_mixture_is_the_weighted_sum_of_its_components_probabilities_per_pixel():
    K, D_ = 3, 4
    out = torch.randn(3 * K, D_, generator=G, dtype=torch.float64)  # K weight logits, K means, K log scales
    x = torch.tensor([0.0, 12 / 255, 200 / 255, 1.0], dtype=torch.float64)
    weights = torch.softmax(out[:K], 0)  # (K, D)
    one = DiscretizedLogistic(1)
    single = torch.tensor([[one.log_prob(torch.stack([out[K + k, d], out[2 * K + k, d]]), x[d:d + 1]).exp().item()
                            for k in range(K)] for d in range(D_)], dtype=torch.float64)  # (D, K)
    expected = torch.log((weights.T * single).sum(-1)).sum()
    torch.testing.assert_close(DiscretizedLogistic(K).log_prob(out.flatten(), x), expected)


def test_the_logistic_scale_has_pixelcnns_floor_and_its_mean_is_the_clamped_mixture_mean():
    assert LOG_SCALE_MIN == pytest.approx(-7.0 - math.log(2))  # PixelCNN++'s -7 on [-1, 1], on [0, 1]
    out = torch.tensor([0.5, 1.5, -50.0, -50.0], dtype=torch.float64)  # mu (2 pixels), then log s far below the floor
    floored = torch.tensor([0.5, 1.5, LOG_SCALE_MIN, LOG_SCALE_MIN], dtype=torch.float64)
    x = torch.tensor([0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(DiscretizedLogistic(1).log_prob(out, x), DiscretizedLogistic(1).log_prob(floored, x))
    torch.testing.assert_close(DiscretizedLogistic(1).mean(out), torch.tensor([0.5, 1.0], dtype=torch.float64))
    mixture = torch.tensor([[0.0], [0.0], [0.2], [1.4], [-3.0], [-3.0]], dtype=torch.float64).flatten()  # K=2, D=1
    torch.testing.assert_close(DiscretizedLogistic(2).mean(mixture), torch.tensor([0.6], dtype=torch.float64))


# In the model: the decoder's outputs, the bound, training and evaluation under each likelihood

def test_iwae_under_a_discretized_logistic_is_the_hand_computed_bound():
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_dims=(8,), latent_dim=2, likelihood="logistic")).eval()
    x = torch.randint(0, 256, (3, 784), generator=G).float() / 255
    x[:, :100] = 0.0  # the end bins too
    x[:, 100:150] = 1.0
    k = 6
    nll, _ = iwae_batch(model, x, k, torch.Generator().manual_seed(5))
    with torch.no_grad():  # the same noise, drawn as the estimator draws it
        eps = torch.randn((k, 3, 2), generator=torch.Generator().manual_seed(5))
        mu, logvar = model.encode(x)
        z = mu + torch.exp(0.5 * logvar) * eps  # (k, 3, 2)
        out = model.decode(z).double().unflatten(-1, (2, 784))  # (k, 3, [mu, log s], 784)
    mu, logvar, z, x = mu.double(), logvar.double(), z.double(), x.double()
    cdf = logistic_cdf(out[..., 0, :], out[..., 1, :].clamp(min=LOG_SCALE_MIN).exp())
    upper = torch.where(x >= 1, 1.0, cdf(x + 0.5 / 255))
    lower = torch.where(x <= 0, 0.0, cdf(x - 0.5 / 255))
    log_px = torch.log(upper - lower).sum(-1)
    log_w = log_px + D.Normal(0, 1).log_prob(z).sum(-1) - D.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    expected = math.log(k) - torch.logsumexp(log_w, 0)
    torch.testing.assert_close(nll.double(), expected, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("likelihood, components", [("continuous_bernoulli", 1), ("logistic", 1), ("logistic", 2)])
def test_each_likelihood_trains_evaluates_and_draws_its_means(tmp_path, mnist_root, likelihood, components):
    cfg = Config(data=DataConfig(root=str(mnist_root), download=False),
                 model=ModelConfig(hidden_dims=(32,), latent_dim=3, likelihood=likelihood,
                                   likelihood_components=components),
                 train=TrainConfig(epochs=2, batch_size=64, lr=3e-3, device="cpu"),
                 output=OutputConfig(dir=str(tmp_path / "run")))
    result = train(cfg)
    assert result.rows[-1]["test_loss"] < result.rows[0]["train_loss"]  # it learns (in the training's nats)
    metrics = evaluate_checkpoint(result.run_dir, ["eval.iwae_samples=4"])
    assert metrics["likelihood"] == likelihood and math.isfinite(metrics["nll_iwae"])
    assert metrics["nll_iwae"] <= metrics["negative_elbo_k_samples"] + 1e-6
    # both measured as probabilities of 8-bit pixels (the continuous Bernoulli's density over each level's bin):
    # between 0 and 8 bits each, the API refusing what is not 8-bit
    assert 0 < metrics["nll_iwae_bits_per_dim"] < 8 and "code length" in metrics["protocol"]["targets"]
    with pytest.raises(UserError, match="multiples of 1/255"):
        load(result.run_dir, device="cpu").nll(torch.full((1, 784), 0.001))
    model = load(result.run_dir, device="cpu")
    samples = model.sample(4)
    assert samples.shape == (4, 1, 28, 28) and 0 <= samples.min() and samples.max() <= 1
    out = model.module.decode(torch.zeros(1, 3))
    assert out.shape == (1, model.module.likelihood.params * 784)
    torch.testing.assert_close(model.decode(torch.zeros(1, 3)).flatten(), model.module.likelihood.mean(out).flatten())


@pytest.mark.parametrize("override, message", [
    (["model.likelihood=logistic", "data.binarize=dynamic"], "model.likelihood models grey levels: it needs "
                                                             "data.binarize=none"),
    (["model.likelihood=continuous_bernoulli", "model.output_bias_init=pixel_means"], "pixel_means sets Bernoulli "
                                                                                      "logits"),
])
def test_likelihoods_that_do_not_fit_the_data_or_the_init_are_refused(override, message):
    with pytest.raises(UserError, match=message):
        load_config(None, override)
