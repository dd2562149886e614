import pytest
import torch

from vae.config.schema import ModelConfig
from vae.model.activations import ELU
from vae.model.vae import VAE, TwoLayerVAE, build_model


@pytest.mark.parametrize("hidden", [(), (64,), (64, 32)])
def test_shapes_through_encode_reparameterize_decode(hidden):
    model = VAE(ModelConfig(hidden_dims=hidden, latent_dim=6))
    x = torch.rand(5, 784)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 6)
    eps = model.noise(5)
    assert eps.shape == (5, 6)
    assert model.decode(model.reparameterize(mu, logvar, eps)).shape == (5, 784)
    out = model(x, eps)
    assert out.logits.shape == (5, 784) and torch.equal(mu, out.mu)
    torch.testing.assert_close(out.z, mu + torch.exp(0.5 * logvar) * eps)  # the sample the logits decode


def test_classic_architecture_is_784_400_20():
    model = VAE(ModelConfig())
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 400), (400, 40), (20, 400), (400, 784)]
    assert sum(p.numel() for p in model.parameters()) == 652_824


def test_reparameterization_samples_the_posterior_and_passes_gradients():
    mu = torch.tensor([[1.5, -2.0]]).expand(200_000, 2).clone().requires_grad_()
    logvar = torch.tensor([[0.0, 2.0 * torch.tensor(0.3).log().item()]]).expand(200_000, 2).clone().requires_grad_()
    z = VAE.reparameterize(mu, logvar, torch.randn(200_000, 2, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(z.mean(0), torch.tensor([1.5, -2.0]), atol=0.01, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 0.3]), atol=0.01, rtol=0)
    z.sum().backward()
    assert torch.all(mu.grad == 1) and logvar.grad.abs().sum() > 0


def test_a_seeded_generator_makes_noise_repeatable():
    model = VAE(ModelConfig(hidden_dims=(8,), latent_dim=3))
    a = model.noise(4, torch.Generator().manual_seed(5))
    b = model.noise(4, torch.Generator().manual_seed(5))
    assert a.shape == (4, 3) and torch.equal(a, b) and not torch.equal(a, model.noise(4))


@pytest.mark.parametrize("name, module", [("relu", torch.nn.ReLU), ("tanh", torch.nn.Tanh), ("elu", ELU)])
def test_activation_sits_between_hidden_layers_only(name, module):
    model = VAE(ModelConfig(hidden_dims=(200, 200), latent_dim=50, activation=name))
    kinds = [type(m) for m in model.encoder]
    assert kinds == [torch.nn.Linear, module, torch.nn.Linear, module, torch.nn.Linear]
    assert [m.out_features for m in model.encoder if isinstance(m, torch.nn.Linear)] == [200, 200, 100]


@pytest.mark.parametrize("channels, sides", [((8,), [28]), ((8, 16), [28, 14]), ((8, 16, 16), [28, 14, 7])])
def test_conv_stages_halve_the_side_and_the_decoder_mirrors_them(channels, sides):
    model = VAE(ModelConfig(arch="conv", channels=channels, res_blocks=2, latent_dim=6))
    seen = []
    for block in [m for m in model.modules() if type(m).__name__ == "ResidualBlock"]:
        block.register_forward_hook(lambda m, inp, out: seen.append(tuple(out.shape[1:])))
    x = torch.rand(5, 784)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 6)
    stages = [(c, s, s) for c, s in zip(channels, sides) for _ in range(2)]  # two blocks a stage
    assert seen == stages
    model.decode(mu)
    assert seen[len(stages):] == stages[::-1]  # the decoder's blocks, in mirror order
    logits = model(x, model.noise(5)).logits
    assert logits.shape == (5, 784)
    eps = torch.randn(3, 5, 6)  # k samples of z per example, as the IWAE objective decodes them
    logits = model(x, eps).logits
    assert logits.shape == (3, 5, 784)
    assert torch.allclose(logits[1], model.decode(model.reparameterize(mu, logvar, eps[1])), atol=1e-6)


def test_a_residual_block_adds_its_branch_to_the_input():
    from vae.model.conv import ResidualBlock
    block = ResidualBlock(4, torch.nn.ReLU)
    x = torch.randn(2, 4, 7, 7)
    assert not torch.allclose(block(x), x)
    torch.nn.init.zeros_(block.f[-1].weight)
    torch.nn.init.zeros_(block.f[-1].bias)
    assert torch.equal(block(x), x)  # a zero branch is the identity


def two_layer(seed=0, inference="bottom_up"):
    torch.manual_seed(seed)
    return build_model(ModelConfig(hidden_dims=(32,), latent_dim=6, latent2_dim=3, hidden2_dims=(16,),
                                   inference=inference))


def test_two_stochastic_layers_weigh_each_sample_by_its_log_densities():
    from torch.distributions import Normal
    model = two_layer()
    assert isinstance(model, TwoLayerVAE) and model.noise_dim == 9
    x, eps = torch.rand(5, 784), torch.randn(4, 5, 9)
    out = model(x, eps)
    assert out.logits.shape == (4, 5, 784) and out.mu.shape == (5, 6)
    assert out.rate.kl_dims.shape == (5, 9) and out.rate.log_ratio.shape == (4, 5)
    # the same quantities from torch.distributions, layer by layer
    mu1, logvar1 = model.encode(x)
    q1 = Normal(mu1, torch.exp(0.5 * logvar1))
    z1 = mu1 + q1.scale * eps[..., :6]
    mu2, logvar2 = model.encoder2(z1).chunk(2, -1)
    q2 = Normal(mu2, torch.exp(0.5 * logvar2))
    z2 = mu2 + q2.scale * eps[..., 6:]
    mu_p, logvar_p = model.prior1(z2).chunk(2, -1)
    p1 = Normal(mu_p, torch.exp(0.5 * logvar_p))
    log_ratio = (Normal(0.0, 1.0).log_prob(z2) - q2.log_prob(z2)).sum(-1) + (p1.log_prob(z1) - q1.log_prob(z1)).sum(-1)
    torch.testing.assert_close(out.rate.log_ratio, log_ratio, rtol=1e-5, atol=1e-4)
    top_kl = torch.distributions.kl_divergence(q2, Normal(0.0, 1.0)).mean(0)  # analytic given each z1
    torch.testing.assert_close(out.rate.kl_dims[:, 6:], top_kl, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.rate.kl_dims[:, :6], (q1.log_prob(z1) - p1.log_prob(z1)).mean(0),
                               rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out.logits, model.decode(z1))


@pytest.mark.parametrize("inference", ["bottom_up", "top_down"])
def test_two_layers_analytic_rate_agrees_with_its_sampled_estimate(inference):
    model = two_layer(1, inference)
    x = torch.rand(3, 784)
    out = model(x, torch.randn(20_000, 3, 9, generator=torch.Generator().manual_seed(0)))
    # rate.kl and -log_ratio share the samples; they differ where a layer's KL is analytic in the one (z2's given
    # z1 bottom-up; z1's given z2 and z2's top-down) and sampled in the other: equal in expectation only if right
    sampled = -out.rate.log_ratio
    stderr = sampled.std(0) / sampled.shape[0] ** 0.5
    assert torch.all((sampled.mean(0) - out.rate.kl).abs() < 4 * stderr + 1e-3)


@pytest.mark.parametrize("inference", ["bottom_up", "top_down"])
def test_two_layers_under_bf16_autocast_keep_the_rate_in_fp32(inference):
    model = two_layer(3, inference)
    with torch.autocast("cpu", torch.bfloat16):
        out = model(torch.rand(5, 784), torch.randn(2, 5, 9))
    assert out.logits.dtype == torch.bfloat16  # the networks run in bf16
    assert out.rate.kl_dims.dtype == out.rate.log_ratio.dtype == torch.float32
    assert torch.isfinite(out.rate.kl_dims).all() and torch.isfinite(out.rate.log_ratio).all()


def test_two_layers_stack_on_the_conv_networks():
    torch.manual_seed(4)
    model = build_model(ModelConfig(arch="conv", channels=(4, 8), latent_dim=6, latent2_dim=3, hidden2_dims=(8,)))
    out = model(torch.rand(5, 784), torch.randn(2, 5, 9))
    assert out.logits.shape == (2, 5, 784) and out.rate.kl_dims.shape == (5, 9)
    assert model.generate(torch.randn(4, 9)).shape == (4, 784)


def test_two_layer_samples_come_from_the_prior_ancestrally():
    """For a fixed z2 (the noise's last latent2 numbers) and fresh noise for z1, the z1 that generate
    decodes follows p(z1|z2): torch.distributions.Normal of prior1(z2)'s mean and log-variance. Its
    sample mean, standard deviation and mean log-density over n draws lie within 5 standard errors
    of the prior's; the draws for one z2 fail that test against the other z2's prior, and with the
    z1 noise held fixed a change of z2 alone changes the output."""
    from torch.distributions import Normal
    model = two_layer(2)
    n, gen = 20_000, torch.Generator().manual_seed(0)
    decode, decoded = model.decode, []
    model.decode = lambda z: decoded.append(z) or decode(z)  # the z1 that generate hands the decoder

    def moments_match(z1, prior):
        mean_ok = (z1.mean(0) - prior.mean).abs() < 5 * prior.stddev / n ** 0.5
        std_ok = (z1.std(0) / prior.stddev - 1).abs() < 5 / (2 * n) ** 0.5  # SE of a sample std: 1/sqrt(2n)
        # E[log p(z1|z2)] = -H[p(z1|z2)]; one draw's log-density has variance 1/2 per dim, 6 dims
        log_p_ok = (prior.log_prob(z1).sum(-1).mean() + prior.entropy().sum()).abs() < 5 * (3 / n) ** 0.5
        return bool(mean_ok.all() and std_ok.all() and log_p_ok)

    z2s = torch.tensor([[1.5, -1.5, 1.5], [-1.5, 1.5, -1.5]])
    draws, priors = [], []
    with torch.no_grad():
        for z2 in z2s:
            logits = model.generate(torch.cat([torch.randn(n, 6, generator=gen), z2.expand(n, 3)], dim=1))
            z1 = decoded.pop()
            assert z1.shape == (n, 6) and torch.equal(logits, decode(z1))  # the logits of p(x|z1)
            mu_p, logvar_p = model.prior1(z2).chunk(2, -1)
            draws.append(z1)
            priors.append(Normal(mu_p, torch.exp(0.5 * logvar_p)))
        assert moments_match(draws[0], priors[0]) and moments_match(draws[1], priors[1])
        assert not moments_match(draws[0], priors[1]) and not moments_match(draws[1], priors[0])
        e1 = torch.randn(4, 6, generator=gen)
        a, b = (model.generate(torch.cat([e1, z2.expand(4, 3)], 1)) for z2 in z2s)
        assert not torch.allclose(a, b)
    del model.decode  # the class's again
    assert model(torch.rand(5, 784), torch.randn(5, 9)).logits.shape == (5, 784)  # one sample, no k dim
