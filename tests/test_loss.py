import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from vae.loss import bernoulli_log_likelihood, kl_nats, reconstruction_nats, vae_loss


def random_posterior(batch=16, latent=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, latent, generator=g), torch.randn(batch, latent, generator=g)


def test_kl_matches_torch_distributions():
    mu, logvar = random_posterior()
    q = Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)
    p = Independent(Normal(torch.zeros_like(mu), torch.ones_like(mu)), 1)
    torch.testing.assert_close(kl_nats(mu, logvar), kl_divergence(q, p))


def test_kl_matches_a_monte_carlo_estimate():
    mu, logvar = random_posterior(batch=4, latent=3, seed=1)
    q = Normal(mu, torch.exp(0.5 * logvar))
    z = q.sample((200_000,))  # (S, B, L)
    log_ratio = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1)  # (S, B)
    estimate = log_ratio.mean(0)
    stderr = log_ratio.std(0) / math.sqrt(z.shape[0])
    assert torch.all((estimate - kl_nats(mu, logvar)).abs() < 5 * stderr)


def test_kl_is_zero_exactly_at_the_prior_and_positive_elsewhere():
    zeros = torch.zeros(3, 4)
    assert torch.equal(kl_nats(zeros, zeros), torch.zeros(3))
    mu, logvar = random_posterior()
    assert torch.all(kl_nats(mu, logvar) > 0)


def test_reconstruction_is_bernoulli_cross_entropy_summed_over_pixels():
    g = torch.Generator().manual_seed(2)
    logits, x = torch.randn(6, 784, generator=g), torch.rand(6, 784, generator=g)
    p = torch.sigmoid(logits).double()
    by_hand = -(x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    torch.testing.assert_close(reconstruction_nats(logits, x).double(), by_hand)


def test_reconstruction_stays_finite_where_sigmoid_saturates():
    logits = torch.tensor([[200.0, -200.0]])
    assert reconstruction_nats(logits, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)
    assert reconstruction_nats(logits, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(400.0)


def test_loss_terms_are_per_example_and_add_up():
    mu, logvar = random_posterior(batch=8)
    logits, x = torch.randn(8, 784), torch.rand(8, 784)
    terms = vae_loss(logits, x, mu, logvar)
    assert terms.reconstruction.shape == terms.kl.shape == (8,)
    torch.testing.assert_close(terms.total, terms.reconstruction + terms.kl)


def test_bernoulli_log_likelihood_broadcasts_over_samples_and_equals_minus_reconstruction():
    g = torch.Generator().manual_seed(3)
    logits, x = torch.randn(7, 5, 784, generator=g), torch.rand(5, 784, generator=g)
    log_lik = bernoulli_log_likelihood(logits, x)
    assert log_lik.shape == (7, 5)
    torch.testing.assert_close(log_lik[4], -reconstruction_nats(logits[4], x), rtol=1e-5, atol=1e-3)
