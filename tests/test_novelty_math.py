"""The numbers behind scoring new data, against independent references: the aggregate posteriors' KL against a
closed form, the per-image KL to the reference against quadrature, AUROC against a hand count, the permutation
test's p-values under the null and its power, and each score's sign on a hand case."""
import itertools
import math
import zlib

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal, kl_divergence

from vae.evaluate.estimators import GaussianComponents
from vae.evaluate.heldout import Posteriors
from vae.novelty.datasets import aggregate_kl, aggregate_kl_terms, mmd_test
from vae.novelty.scores import compressed_bits, kl_to_reference, refit_gain
from vae.novelty.separation import separation


def posteriors(mu: torch.Tensor, logvar: torch.Tensor) -> Posteriors:
    return Posteriors(mu.double(), logvar.double(), None, None, None, None, mu.double())


def linear_gaussian_codes(n, mean, cov, weight, bias, noise_var, gen):
    """x ~ N(mean, cov) in 2-D, encoded by the linear-Gaussian encoder q(z|x) = N(W x + b, noise_var I): the
    posteriors' means and log-variances, and the aggregate posterior q(z) = N(W mean + b, W cov W^T + noise_var I)."""
    x = MultivariateNormal(mean, cov).sample((n,)) if gen is None else \
        mean + torch.randn(n, 2, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    mu = x @ weight.T + bias
    logvar = torch.full_like(mu, math.log(noise_var))
    return mu, logvar, MultivariateNormal(weight @ mean + bias, weight @ cov @ weight.T + noise_var * torch.eye(2,
                                                                                                          dtype=mu.dtype))


def test_the_log_mixture_is_torch_distributions_mixture_density_with_and_without_a_component_left_out():
    gen = torch.Generator().manual_seed(0)
    mu, logvar, z = (torch.randn(7, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    mixture = MixtureSameFamily(Categorical(logits=torch.zeros(7, dtype=torch.float64)),
                                Independent(Normal(mu, torch.exp(0.5 * logvar)), 1))
    assert torch.allclose(GaussianComponents(mu, logvar).log_mixture(z), mixture.log_prob(z))
    left_out = torch.tensor([3, 0, 6, 1, 2, 5, 4])
    for i in range(7):  # row i's mixture without component left_out[i], by torch.distributions
        keep = torch.arange(7) != left_out[i]
        rest = MixtureSameFamily(Categorical(logits=torch.zeros(6, dtype=torch.float64)),
                                 Independent(Normal(mu[keep], torch.exp(0.5 * logvar[keep])), 1))
        assert torch.allclose(GaussianComponents(mu, logvar).log_mixture(z, left_out)[i], rest.log_prob(z[i]))


def test_the_aggregate_posteriors_kl_matches_the_closed_form_of_a_linear_gaussian_encoder_of_gaussian_data():
    gen = torch.Generator().manual_seed(1)
    w = torch.tensor([[1.0, 0.3], [-0.2, 0.8]], dtype=torch.float64)
    b = torch.tensor([0.1, -0.1], dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    new_mu, new_lv, q_new = linear_gaussian_codes(4000, torch.tensor([0.8, 0.0], dtype=torch.float64),
                                                  torch.tensor([[1.0, 0.3], [0.3, 0.6]], dtype=torch.float64),
                                                  w, b, 0.3, gen)
    ref_mu, ref_lv, q_ref = linear_gaussian_codes(4000, torch.zeros(2, dtype=torch.float64), eye, w, b, 0.3, gen)
    exact = kl_divergence(q_new, q_ref).item()
    estimate = aggregate_kl(new_mu, new_lv, ref_mu, ref_lv, seed=0, resamples=200)
    assert 0.3 < exact < 1.0  # a shift large enough that a wrong estimator shows
    assert estimate["kl"] == pytest.approx(exact, abs=0.06)
    assert estimate["low"] < estimate["kl"] < estimate["high"]
    assert estimate["high"] - estimate["low"] < 0.2


def test_leaving_each_images_own_component_out_keeps_the_kl_near_zero_when_the_data_do_not_differ():
    """Narrow posteriors (sd 0.05 beside data of sd 1): with its own component, q_new(z_i) counts x_i as its own
    neighbour and the KL of two samples of one distribution comes out far above 0 (its true value); left out, it is
    near 0 (over 8 draws here: within 0.21 of it, against 1.0 to 1.4 with the own component)."""
    gen = torch.Generator().manual_seed(0)
    new_mu, ref_mu = torch.randn(2000, 2, generator=gen), torch.randn(1999, 2, generator=gen)
    logvar = torch.full((2000, 2), math.log(0.05**2))
    terms = aggregate_kl_terms(new_mu, logvar, ref_mu, logvar[:1999], torch.Generator().manual_seed(1000))
    z = new_mu.double() + 0.05 * torch.randn(2000, 2, generator=torch.Generator().manual_seed(1000),
                                             dtype=torch.float64)  # the same draws of z
    naive = (GaussianComponents(new_mu, logvar).log_mixture(z) -
             GaussianComponents(ref_mu, logvar[:1999]).log_mixture(z)).mean().item()
    assert abs(terms.mean().item()) < 0.25
    assert naive > 0.9


def test_kl_to_the_reference_matches_quadrature_in_one_dimension():
    """KL(N(m, s^2) || (1/M) sum_j N(mu_j, s_j^2)) by the Monte Carlo score against a fine grid's integral."""
    ref_mu, ref_lv = torch.tensor([[-1.0], [0.5], [2.0]]), torch.tensor([[0.0], [-1.0], [-0.5]])
    image_mu, image_lv = torch.tensor([[0.8]]), torch.tensor([[-1.5]])
    grid = torch.linspace(-12, 12, 200001, dtype=torch.float64)
    q = Normal(image_mu.double()[0, 0], torch.exp(0.5 * image_lv.double()[0, 0]))
    mixture = torch.logsumexp(Normal(ref_mu.double()[:, 0], torch.exp(0.5 * ref_lv.double()[:, 0]))
                              .log_prob(grid[:, None]), dim=1) - math.log(3)
    density = q.log_prob(grid).exp()
    exact = torch.trapezoid(density * (q.log_prob(grid) - mixture), grid).item()
    estimate = kl_to_reference(posteriors(image_mu, image_lv), posteriors(ref_mu, ref_lv), samples=200_000, seed=0)
    assert estimate.item() == pytest.approx(exact, abs=0.01)


def test_a_reference_image_leaves_its_own_component_out_of_its_kl_to_the_reference():
    mu, lv = torch.tensor([[0.0], [5.0]]), torch.tensor([[-4.0], [-4.0]])
    ref = posteriors(mu, lv)
    own = kl_to_reference(ref, ref, samples=2000, seed=0, leave_out=True)
    other = kl_to_reference(posteriors(mu[:1], lv[:1]), posteriors(mu[1:], lv[1:]), samples=2000, seed=0)
    assert own[0].item() == pytest.approx(other[0].item(), rel=0.02)  # image 0 against image 1 alone
    assert own[0].item() > 100  # 5 apart at sd 0.14: hundreds of nats, where its own component would give ~log 2


def test_auroc_aupr_and_fpr_at_95_tpr_match_a_hand_count():
    ref, new = np.array([0.1, 0.4, 0.35, 0.8, 0.5]), np.array([0.9, 0.4, 0.6, 0.7])
    pairs = [1.0 if n > r else 0.5 if n == r else 0.0 for n, r in itertools.product(new, ref)]
    result = separation(ref, new)
    assert result["auroc"] == pytest.approx(sum(pairs) / len(pairs))  # 16.5 / 20
    # catching all 4 new images (>= 95%) takes the threshold down to 0.4, which flags 0.4, 0.5 and 0.8 of 5
    assert result["fpr_at_95_tpr"] == pytest.approx(3 / 5)
    # average precision: at each new image (ranked 0.9, 0.8*, 0.7, 0.6, 0.5*, 0.4/0.4 tie) precision times recall step
    assert result["aupr"] == pytest.approx((1 / 1 + 2 / 3 + 3 / 4 + 4 / 7) / 4)
    assert separation(new, ref)["auroc"] == pytest.approx(1 - result["auroc"])  # the sign: higher = new


def test_the_permutation_tests_p_values_are_uniform_under_the_null_and_it_detects_a_known_shift():
    rng = torch.Generator().manual_seed(3)
    null = np.array([mmd_test(torch.randn(40, 2, generator=rng), torch.randn(60, 2, generator=rng), 199,
                              seed=i)["p_value"] for i in range(300)])
    # Uniform on {1/200, ..., 1}: 5% below 0.05 (binomial sd over 300 draws 1.3%); a KS distance within 0.08
    assert 0.02 <= (null <= 0.05).mean() <= 0.09
    assert np.abs(np.sort(null) - np.linspace(0, 1, len(null))).max() < 0.08
    shifted = [mmd_test(torch.randn(40, 2, generator=rng) + torch.tensor([0.8, 0.0]),
                        torch.randn(60, 2, generator=rng), 199, seed=i)["p_value"] for i in range(50)]
    assert np.mean(np.array(shifted) < 0.05) >= 0.9


def test_every_score_is_higher_for_the_more_unusual_image_on_a_hand_case():
    # complexity's compressor: a flat image is shorter to write than noise, by every compressor
    flat = torch.full((1, 1, 28, 28), 128, dtype=torch.uint8)
    noise = torch.randint(0, 256, (1, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for compressor, binary in itertools.product(("png", "bz2", "zlib"), (False, True)):
        bits = compressed_bits(torch.cat([flat, noise]), compressor, binary)
        assert bits[0] < bits[1], compressor
    assert compressed_bits(noise, "zlib").item() == 8 * len(zlib.compress(noise.numpy().tobytes(), 9))
    # binary pixels are coded a bit each: 784 bits of noise take about 98 bytes, not 784
    assert compressed_bits(noise, "zlib", binary=True).item() < 8 * 120
    # kl_to_reference: a code among the reference codes is less unusual than one far from them
    ref = posteriors(torch.zeros(10, 2) + torch.linspace(-1, 1, 10)[:, None], torch.full((10, 2), -2.0))
    near, far = (posteriors(torch.tensor([[c, c]]), torch.full((1, 2), -2.0)) for c in (0.1, 4.0))
    assert kl_to_reference(near, ref, 500, 0) < kl_to_reference(far, ref, 500, 0)


def test_refitting_a_posterior_the_encoder_got_wrong_gains_more_than_refitting_a_good_one(tiny_model_and_images):
    """regret's sign: the same images, once with the encoder's posterior, once with it shifted far off."""
    model, x = tiny_model_and_images
    with torch.no_grad():
        prior = model.prior_distribution()
    eps = torch.randn(4, len(x), model.latent_dim, generator=torch.Generator().manual_seed(0))
    good = refit_gain(model, prior, x, eps, steps=30, lr=0.05)
    with torch.no_grad():
        model.encoder[-1].bias[:model.latent_dim] += 3.0  # every posterior mean 3 off
    bad = refit_gain(model, prior, x, eps, steps=30, lr=0.05)
    assert (good >= 0).all() and (bad >= 0).all()
    assert bad.mean() > good.mean() + 1.0


@pytest.fixture
def tiny_model_and_images(evaluated):
    from conftest import digit_split

    from vae import load
    model = load(evaluated[4][0], device="cpu").module
    split = digit_split(50, seed=5)
    return model, split.pixels(torch.arange(50))


@pytest.mark.parametrize("n, m", [(600, 1150), (1150, 600)])
def test_the_kl_stays_near_zero_for_one_distribution_when_the_two_sides_differ_in_size(n, m):
    """Both mixtures hold exactly min(n - 1, m) components: with more on one side its log-density is biased less,
    and two samples of one distribution (6-D, posteriors of sd 0.3) came out about 0.75 nats apart."""
    estimates = []
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        new_mu, ref_mu = torch.randn(n, 6, generator=gen), torch.randn(m, 6, generator=gen)
        logvar = torch.full((max(n, m), 6), math.log(0.3**2))
        terms = aggregate_kl_terms(new_mu, logvar[:n], ref_mu, logvar[:m], torch.Generator().manual_seed(100 + seed))
        estimates.append(terms.mean().item())
    assert abs(np.mean(estimates)) < 0.15


def test_a_reference_image_leaves_out_its_own_component_across_the_chunks_of_rows():
    """300 reference images, more than a chunk of rows: each one's KL to the others, against a brute-force
    computation with its own component removed (the same draws of z)."""
    gen = torch.Generator().manual_seed(4)
    mu, lv = torch.randn(300, 2, generator=gen, dtype=torch.float64), torch.full((300, 2), -1.0, dtype=torch.float64)
    ref = posteriors(mu, lv)
    scored = kl_to_reference(ref, ref, samples=3, seed=0, leave_out=True)
    draw = torch.Generator().manual_seed(0)
    for start in range(0, 300, 256):  # the draws as the score makes them, a chunk at a time
        m, v = mu[start:start + 256], lv[start:start + 256]
        z = m + torch.exp(0.5 * v) * torch.randn((3, *m.shape), generator=draw, dtype=torch.float64)
        for j in range(len(m)):
            i = start + j
            others = torch.arange(300) != i
            mixture = MixtureSameFamily(Categorical(logits=torch.zeros(299, dtype=torch.float64)),
                                        Independent(Normal(mu[others], torch.exp(0.5 * lv[others])), 1))
            expected = (Independent(Normal(mu[i], torch.exp(0.5 * lv[i])), 1).log_prob(z[:, j])
                        - mixture.log_prob(z[:, j])).mean()
            assert scored[i].item() == pytest.approx(expected.item(), rel=1e-9)
