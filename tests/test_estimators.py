import math

import pytest
import torch
from conftest import gaussian_bound

from vae.config.schema import ModelConfig
from vae.data.mnist import load_dataset
from vae.evaluate.estimators import active_dims, active_units, rate_split
from vae.evaluate.heldout import encode_split
from vae.model.distributions import LOG_2PI, STANDARD_NORMAL, GaussianMixture, kl_per_dim, log_normal
from vae.model.vae import VAE


class LinearGaussian:
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s^2 I): log p(x), the posterior and the ELBO are closed-form."""

    def __init__(self, d=6, latent=3, sigma=0.5, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(d, latent, generator=g, dtype=torch.float64)
        self.b = torch.randn(d, generator=g, dtype=torch.float64)
        self.var = sigma ** 2
        self.x = self.W @ torch.randn(latent, 4, generator=g, dtype=torch.float64) + self.b[:, None]
        self.x = (self.x + sigma * torch.randn(self.x.shape, generator=g, dtype=torch.float64)).T  # (4, d)

    def log_lik(self, z, x):  # z (S, B, L), x (B, D) -> (S, B)
        mean = z @ self.W.T + self.b
        return -0.5 * ((x - mean).pow(2) / self.var + math.log(self.var) + LOG_2PI).sum(-1)

    def log_px(self):
        cov = self.W @ self.W.T + self.var * torch.eye(len(self.b), dtype=torch.float64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(self.x)

    def posterior(self):
        """Exact p(z|x), as (mu, logvar) of its diagonal marginals, and the full covariance."""
        precision = torch.eye(self.W.shape[1], dtype=torch.float64) + self.W.T @ self.W / self.var
        cov = torch.linalg.inv(precision)
        mu = (self.x - self.b) @ self.W @ cov / self.var
        return mu, cov.diagonal().log().expand_as(mu).clone(), cov

    def elbo(self, mu, logvar):
        """E_q[log p(x|z)] - KL(q || p) in closed form for a diagonal Gaussian q."""
        expected = self.log_lik(mu[None], self.x)[0] - 0.5 * (logvar.exp() @ (self.W ** 2).sum(0)) / self.var
        return expected - kl_per_dim(mu, logvar).sum(-1)


def imperfect_posterior(m: LinearGaussian):
    mu, logvar, _ = m.posterior()
    return mu + 0.3, logvar + 0.5  # off-centre and too wide: the bound is loose


def test_iwae_with_one_sample_is_the_elbo_in_expectation():
    m = LinearGaussian()
    mu, logvar = imperfect_posterior(m)
    draws = torch.stack([gaussian_bound(m.log_lik, m.x, mu, logvar, 1, 1,
                                                   torch.Generator().manual_seed(i))[0] for i in range(4000)])
    stderr = draws.std(0) / math.sqrt(len(draws))
    assert torch.all((draws.mean(0) - m.elbo(mu, logvar)).abs() < 4 * stderr)


def test_k_sample_elbo_estimates_the_closed_form_elbo():
    m = LinearGaussian()
    mu, logvar = imperfect_posterior(m)
    _, elbo = gaussian_bound(m.log_lik, m.x, mu, logvar, 200_000, 50_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(elbo, m.elbo(mu, logvar), atol=0.02, rtol=0)


def test_iwae_bound_tightens_with_k_on_average():
    m = LinearGaussian()
    mu, logvar = imperfect_posterior(m)

    def mean_bound(k):
        return torch.stack([gaussian_bound(m.log_lik, m.x, mu, logvar, k, k,
                                                      torch.Generator().manual_seed(i))[0]
                            for i in range(300)]).mean().item()
    bounds = [mean_bound(k) for k in (1, 5, 50, 500)]
    assert bounds == sorted(bounds) and bounds[-1] - bounds[0] > 0.1
    assert bounds[-1] < m.log_px().mean().item()


def test_iwae_converges_to_the_true_log_likelihood():
    m = LinearGaussian()
    mu, logvar = imperfect_posterior(m)
    log_px, elbo = gaussian_bound(m.log_lik, m.x, mu, logvar, 50_000, 5000,  # 10 chunks
                                             torch.Generator().manual_seed(1))
    torch.testing.assert_close(log_px, m.log_px(), atol=0.02, rtol=0)
    assert torch.all(m.log_px() - elbo > 0.1)  # the ELBO of a poor q is visibly looser


def test_with_the_exact_posterior_every_bound_is_log_px_whatever_the_chunks():
    m = LinearGaussian(latent=1)
    mu, logvar, _ = m.posterior()
    log_px, elbo = gaussian_bound(m.log_lik, m.x, mu, logvar, 7, 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(log_px, m.log_px(), atol=1e-9, rtol=0)  # chunks of 3, 3 and 1
    torch.testing.assert_close(elbo, m.log_px(), atol=1e-9, rtol=0)


def test_log_normal_matches_torch_distributions():
    z, mu, logvar = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 4)
    expected = torch.distributions.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(log_normal(z, mu, logvar), expected)


def test_rate_split_terms_add_up_to_the_average_kl():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(2000, 4, generator=g), torch.randn(2000, 4, generator=g) * 0.5 - 1
    split = rate_split(mu, logvar, chunk=300, generator=torch.Generator().manual_seed(1))
    average_kl = kl_per_dim(mu, logvar).sum(-1).double().mean().item()
    assert split["mutual_information"] + split["marginal_kl"] == pytest.approx(average_kl, abs=0.15)
    assert 0 < split["mutual_information"] <= split["mutual_information_bound"] == pytest.approx(math.log(2000))
    assert split["marginal_kl"] > 0


@pytest.mark.parametrize("mixture_prior", [False, True])
def test_aggregate_posterior_density_matches_a_brute_force_mixture(mixture_prior):
    """The marginal KL against the model's own prior: N(0, I), or a Gaussian mixture (torch.distributions')."""
    g = torch.Generator().manual_seed(4)
    mu, logvar = torch.randn(300, 3, generator=g), torch.randn(300, 3, generator=g)  # unequal variances
    prior, reference = STANDARD_NORMAL, torch.distributions.Independent(torch.distributions.Normal(
        torch.zeros(3, dtype=torch.float64), 1.0), 1)
    if mixture_prior:
        prior = GaussianMixture(torch.log_softmax(torch.randn(4, generator=g), 0), torch.randn(4, 3, generator=g),
                                torch.randn(4, 3, generator=g))
        reference = torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(logits=prior.log_weights.double()),
            torch.distributions.Independent(torch.distributions.Normal(
                prior.mu.double(), torch.exp(0.5 * prior.logvar.double())), 1))
    split = rate_split(mu, logvar, prior, chunk=64, generator=torch.Generator().manual_seed(5))
    z = mu.double() + torch.exp(0.5 * logvar.double()) * torch.randn(mu.shape,
                                                                     generator=torch.Generator().manual_seed(5),
                                                                     dtype=torch.float64)
    log_components = log_normal(z[:, None, :], mu.double()[None], logvar.double()[None])  # (300, 300)
    log_qz = torch.logsumexp(log_components, dim=1) - math.log(300)
    expected = (log_qz - reference.log_prob(z)).mean().item()
    # (the mixture's log-density is expanded into matrix products: float64 rounding of ~1e-8)
    assert split["marginal_kl"] == pytest.approx(expected, abs=1e-6 if mixture_prior else 1e-9)


def test_rate_split_is_zero_when_every_posterior_is_the_prior():
    zeros = torch.zeros(500, 3)
    split = rate_split(zeros, zeros, generator=torch.Generator().manual_seed(0))
    assert split["marginal_kl"] == pytest.approx(0, abs=1e-9)
    assert split["mutual_information"] == pytest.approx(0, abs=1e-9)


def test_mutual_information_reaches_log_n_for_distinguishable_codes():
    mu = torch.arange(300.0)[:, None] * torch.ones(1, 2)  # far apart...
    logvar = torch.full((300, 2), -8.0)  # ...and sharp: z identifies x
    split = rate_split(mu, logvar, generator=torch.Generator().manual_seed(0))
    assert split["mutual_information"] == pytest.approx(math.log(300), abs=1e-3)


def test_active_units_count_dimensions_whose_mean_varies():
    g = torch.Generator().manual_seed(0)
    mu = torch.cat([torch.randn(1000, 3, generator=g),  # varies: active
                    torch.full((1000, 2), 0.7),  # constant: inactive
                    0.03 * torch.randn(1000, 1, generator=g)], dim=1)  # variance 0.0009 < 0.01
    assert active_units(mu) == 3


def test_active_units_against_a_learned_prior_count_a_share_of_the_variance_whatever_the_scale():
    g = torch.Generator().manual_seed(0)
    # dim 0: the means carry 0.3 of the variance 1 (0.3 + 0.7); dim 1: 0.005 of it; dim 2: none
    mu = torch.cat([math.sqrt(0.3) * torch.randn(4000, 1, generator=g),
                    math.sqrt(0.005) * torch.randn(4000, 1, generator=g), torch.zeros(4000, 1)], dim=1)
    logvar = torch.log(torch.tensor([0.7, 0.995, 1.0])).expand(4000, 3)
    for scale in (1.0, 0.01, 100.0):  # a learned prior may put z at any scale: the count stays
        assert active_units(mu * scale, logvar + 2 * math.log(scale)) == 1
    assert active_units(mu * 0.01) == 0 and active_units(mu * 100.0) == 2  # Burda's absolute threshold does not


def test_the_rule_for_active_units_follows_the_model_s_prior():
    g = torch.Generator().manual_seed(0)
    mu = 10 * torch.cat([math.sqrt(0.3) * torch.randn(4000, 1, generator=g),
                         math.sqrt(0.005) * torch.randn(4000, 1, generator=g)], dim=1)  # variances 30 and 0.5
    logvar = torch.log(100 * torch.tensor([0.7, 0.995])).expand(4000, 2)  # shares 0.3 and 0.005 of z_d's variance
    normal, mixture = VAE(ModelConfig(latent_dim=2)), VAE(ModelConfig(latent_dim=2, prior="mog"))
    assert active_dims(normal, mu, logvar).tolist() == [True, True]  # Var_x(mu_d) > 0.01
    assert active_dims(mixture, mu, logvar).tolist() == [True, False]  # share > 0.01


def test_active_units_of_an_encoder_built_to_use_two_dims(mnist_root):
    _, test = load_dataset(mnist_root, download=False, device=torch.device("cpu"))
    torch.manual_seed(0)
    model = VAE(ModelConfig(hidden_dims=(), latent_dim=5))
    linear = model.encoder[0]  # rows 0..4 give mu, rows 5..9 logvar
    with torch.no_grad():
        linear.weight[:5] = 0
        linear.weight[[0, 1]] = 0.05 * torch.randn(2, 784)  # only mu_0 and mu_1 depend on x
    assert active_units(encode_split(model, test, seed=0).mu) == 2
