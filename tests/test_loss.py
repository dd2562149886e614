import math

import pytest
import torch
from conftest import gaussian_bound
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vae.config.schema import LossConfig
from vae.model.distributions import gaussian_rate, kl_per_dim, log_normal, log_standard_normal
from vae.model.likelihoods import bernoulli_log_likelihood, vae_loss
from vae.train.objective import iwae_nats, objective_nats


def random_posterior(batch=16, latent=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, latent, generator=g), torch.randn(batch, latent, generator=g)


def test_kl_matches_torch_distributions():
    mu, logvar = random_posterior()
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    p = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    torch.testing.assert_close(kl_per_dim(mu, logvar).sum(-1), kl_divergence(q, p))


def test_kl_matches_a_monte_carlo_estimate():
    mu, logvar = random_posterior(batch=4, latent=3, seed=1)
    q = Normal(mu, torch.exp(0.5 * logvar))
    z = q.sample((200_000,))  # (S, B, L)
    log_ratio = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1)  # (S, B)
    estimate = log_ratio.mean(0)
    stderr = log_ratio.std(0) / math.sqrt(z.shape[0])
    assert torch.all((estimate - kl_per_dim(mu, logvar).sum(-1)).abs() < 5 * stderr)


def test_kl_is_zero_exactly_at_the_prior_and_positive_elsewhere():
    zeros = torch.zeros(3, 4)
    assert torch.equal(kl_per_dim(zeros, zeros).sum(-1), torch.zeros(3))
    mu, logvar = random_posterior()
    assert torch.all(kl_per_dim(mu, logvar).sum(-1) > 0)


def test_reconstruction_is_bernoulli_cross_entropy_summed_over_pixels():
    g = torch.Generator().manual_seed(2)
    logits, x = torch.randn(6, 784, generator=g), torch.rand(6, 784, generator=g)  # soft targets
    p = torch.sigmoid(logits).double()
    by_hand = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    torch.testing.assert_close(bernoulli_log_likelihood(logits, x).double(), by_hand)


def test_reconstruction_stays_finite_where_sigmoid_saturates():
    logits = torch.tensor([[200.0, -200.0]])
    assert bernoulli_log_likelihood(logits, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)
    assert bernoulli_log_likelihood(logits, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(-400.0)


def test_loss_terms_are_the_bernoulli_and_gaussian_terms_of_torch_distributions():
    mu, logvar = random_posterior(batch=8)
    g = torch.Generator().manual_seed(4)
    logits, x = torch.randn(3, 8, 784, generator=g), (torch.rand(8, 784, generator=g) < 0.5).float()
    terms = vae_loss(logits, x, gaussian_rate(mu, logvar, torch.zeros(3, *mu.shape)))
    # distortion: -log p(x|z) averaged over the 3 samples of z; rate: KL(q(z|x) || N(0, I))
    log_px = Independent(Bernoulli(logits=logits), 1).log_prob(x)  # (3, 8)
    torch.testing.assert_close(terms.reconstruction, -log_px.mean(0), rtol=1e-5, atol=1e-3)
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    p = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    torch.testing.assert_close(terms.kl, kl_divergence(q, p), rtol=1e-5, atol=1e-5)


def test_bernoulli_log_likelihood_broadcasts_over_samples():
    g = torch.Generator().manual_seed(3)
    logits, x = torch.randn(7, 5, 784, generator=g), (torch.rand(5, 784, generator=g) < 0.5).float()
    log_lik = bernoulli_log_likelihood(logits, x)
    assert log_lik.shape == (7, 5)
    for s in range(7):
        torch.testing.assert_close(log_lik[s], Independent(Bernoulli(logits=logits[s]), 1).log_prob(x),
                                   rtol=1e-5, atol=1e-3)


def linear_decoder(latent=5, pixels=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(latent, pixels, generator=g)
    return lambda z: z @ w


def test_iwae_with_one_sample_is_the_sampled_negative_elbo():
    mu, logvar = random_posterior()
    decode, x = linear_decoder(), torch.rand(16, 12, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(1, 16, 5, generator=torch.Generator().manual_seed(2))
    z = mu + torch.exp(0.5 * logvar) * eps
    expected = -bernoulli_log_likelihood(decode(z), x)[0] + log_normal(z, mu, logvar)[0] - log_standard_normal(z)[0]
    rate = gaussian_rate(mu, logvar, eps)
    torch.testing.assert_close(iwae_nats(bernoulli_log_likelihood(decode(z), x), rate), expected)


def test_iwae_objective_equals_the_evaluation_bound_on_the_same_samples():
    mu, logvar = random_posterior()
    decode, x = linear_decoder(), torch.rand(16, 12, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(50, 16, 5, generator=torch.Generator().manual_seed(3))
    z = mu + torch.exp(0.5 * logvar) * eps
    bound, _ = gaussian_bound(lambda z, x: bernoulli_log_likelihood(decode(z), x), x, mu, logvar,
                              k=50, chunk=50, generator=torch.Generator().manual_seed(3))
    rate = gaussian_rate(mu, logvar, eps)
    iwae = iwae_nats(bernoulli_log_likelihood(decode(z), x), rate)
    torch.testing.assert_close(iwae, -bound.float(), rtol=1e-5, atol=1e-4)
    elbo = vae_loss(decode(z), x, rate).total
    assert torch.all(iwae <= elbo + 1e-4)  # in expectation; here per example


def test_iwae_warmup_tempers_the_latent_part_of_each_log_weight():
    mu, logvar = random_posterior()
    decode, x = linear_decoder(), torch.rand(16, 12, generator=torch.Generator().manual_seed(1))
    eps = torch.randn(7, 16, 5, generator=torch.Generator().manual_seed(4))
    z = mu + torch.exp(0.5 * logvar) * eps
    log_px = bernoulli_log_likelihood(decode(z), x)  # (7, 16)
    log_ratio = log_standard_normal(z) - log_normal(z, mu, logvar)
    rate = gaussian_rate(mu, logvar, eps)
    for w in (0.0, 0.3):
        expected = math.log(7) - torch.logsumexp(log_px + w * log_ratio, dim=0)
        torch.testing.assert_close(iwae_nats(log_px, rate, w), expected, rtol=1e-5, atol=1e-4)
    objective, terms = objective_nats(decode(z), x, rate, LossConfig(iwae_k=7, kl_warmup_epochs=2), 0.3)
    torch.testing.assert_close(objective, iwae_nats(log_px, rate, 0.3).sum())
    # the reported terms are the negative ELBO's, averaged over the k samples, as vae_loss has them
    expected_terms = vae_loss(decode(z), x, rate)
    torch.testing.assert_close(terms.reconstruction, expected_terms.reconstruction, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(terms.kl, expected_terms.kl)


def test_objective_is_the_negative_elbo_by_default_and_beta_weights_the_rate():
    mu, logvar = random_posterior()
    logits, x = torch.randn(1, 16, 12), torch.rand(16, 12)
    eps = torch.zeros(1, 16, 5)
    rate = gaussian_rate(mu, logvar, eps)
    objective, terms = objective_nats(logits, x, rate, LossConfig(), 1.0)
    torch.testing.assert_close(objective, terms.total.sum())
    objective, _ = objective_nats(logits, x, rate, LossConfig(beta=0.25), 0.25)
    torch.testing.assert_close(objective, terms.reconstruction.sum() + 0.25 * terms.kl.sum())


def test_free_bits_stop_penalizing_dimensions_under_the_floor():
    mu = torch.zeros(16, 5, requires_grad=True)
    logvar = torch.full((16, 5), -0.5)
    with torch.no_grad():
        mu[:, :2] = 3.0  # dims 0-1 carry 4.5 nats each (+ a little from the variance); dims 2-4 about 0.03
    logits, x = torch.zeros(1, 16, 12), torch.rand(16, 12)
    objective, terms = objective_nats(logits, x, gaussian_rate(mu, logvar, torch.zeros(1, 16, 5)),
                                      LossConfig(free_bits=1.0), 1.0)
    per_dim = kl_per_dim(mu, logvar).mean(0)[:2].detach()
    assert torch.all(per_dim > 4.5) and torch.all(kl_per_dim(mu, logvar).mean(0)[2:] < 1.0)
    torch.testing.assert_close(objective, terms.reconstruction.sum() + 16 * (per_dim.sum() + 3 * 1.0))
    objective.backward()
    assert torch.all(mu.grad[:, 2:] == 0) and torch.all(mu.grad[:, :2] != 0)
