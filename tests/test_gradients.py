"""Gradient estimators and initialization for the likelihood: DReG / STL (loss.gradient=dreg) against a
per-sample hand expansion and against the standard estimator's mean; the decoder's output bias."""
import pytest
import torch
from conftest import make_mnist
from torch.distributions import Normal

from vae.config.load import load_config
from vae.config.schema import LossConfig, ModelConfig
from vae.model.likelihoods import bernoulli_log_likelihood
from vae.model.vae import VAE, init_output_bias
from vae.train.loop import train
from vae.train.objective import objective_nats


def tiny_vae(seed=0):
    torch.manual_seed(seed)
    return VAE(ModelConfig(hidden_dims=(6,), latent_dim=2))


def images(n, seed=0):
    return (torch.rand(n, 784, generator=torch.Generator().manual_seed(seed)) < 0.3).float()


def gradients(model, x, eps, loss, kl_weight):
    """(encoder, decoder) gradients of the summed training objective, flattened."""
    model.zero_grad()
    out = model(x, eps)
    objective, _ = objective_nats(out.logits, x, out.rate, loss, kl_weight, (out.z, out.mu, out.logvar))
    objective.backward()
    flat = lambda net: torch.cat([p.grad.flatten() for p in net.parameters()])  # noqa: E731
    return flat(model.encoder), flat(model.decoder), objective.detach()


@pytest.mark.parametrize("k, kl_weight", [(5, 1.0), (5, 0.4), (1, 1.0)])
def test_dreg_gradient_is_the_per_sample_hand_expansion(k, kl_weight):
    model, x = tiny_vae(), images(3)
    eps = torch.randn(k, 3, 2, generator=torch.Generator().manual_seed(1))
    encoder, decoder, value = gradients(model, x, eps, LossConfig(iwae_k=k, gradient="dreg"), kl_weight)

    # log w_i = log p(x|z_i) + b (log N(z_i; 0, I) - log N(z_i; mu, sigma)), torch.distributions' densities
    mu, logvar = model.encoder(x).chunk(2, dim=-1)
    z = mu + torch.exp(0.5 * logvar) * eps  # (k, 3, 2)

    def log_w(stop_q):
        q = Normal(mu.detach(), torch.exp(0.5 * logvar.detach())) if stop_q else Normal(mu, torch.exp(0.5 * logvar))
        log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
        return bernoulli_log_likelihood(model.decode(z), x) + kl_weight * (log_p - q.log_prob(z).sum(-1))

    iwae = torch.logsumexp(log_w(False), 0) - torch.log(torch.tensor(float(k)))  # (3,)
    assert value == pytest.approx(-iwae.sum().item(), rel=1e-6)  # the objective's value is -IWAE_k
    v = torch.softmax(log_w(True).detach(), 0)  # (k, 3)
    expected_encoder = 0
    for i in range(k):  # sample by sample: -sum_b v_ib (1 - b + b v_ib) d log w_ib / d phi, through z_ib only
        coefficient = v[i] * (1 - kl_weight + kl_weight * v[i])
        g = torch.autograd.grad((coefficient * log_w(True)[i]).sum(), list(model.encoder.parameters()),
                                retain_graph=True)
        expected_encoder = expected_encoder - torch.cat([t.flatten() for t in g])
    torch.testing.assert_close(encoder, expected_encoder, rtol=1e-4, atol=1e-6)
    g = torch.cat([t.flatten() for t in torch.autograd.grad(-iwae.sum(), list(model.decoder.parameters()))])
    # IWAE's own decoder gradient, up to float32 rounding (the model samples z in float32; in float64 the two
    # agree to 3e-8 of the largest entry)
    torch.testing.assert_close(decoder, g, rtol=1e-4, atol=2e-5 * g.abs().max().item())


@pytest.mark.parametrize("k, kl_weight", [(5, 1.0), (5, 0.4), (1, 1.0)])
def test_dreg_has_the_mean_of_the_standard_gradient(k, kl_weight):
    """Both estimate the gradient of the same bound (IWAE_k, or the ELBO with its analytic KL at k = 1):
    over many draws their means agree within their standard errors. Compared on the encoder's output
    bias (the gradient reaching mu and logvar), 4 numbers."""
    model, x = tiny_vae(seed=3), images(1, seed=2).repeat(200, 1)  # one image, 200 draws per chunk
    gen = torch.Generator().manual_seed(4)
    chunks = {"standard": [], "dreg": []}
    for _ in range(30):
        eps = torch.randn(k, 200, 2, generator=gen)
        for name in chunks:
            gradients(model, x, eps, LossConfig(iwae_k=k, gradient=name), kl_weight)
            chunks[name].append(model.encoder[-1].bias.grad.clone() / 200)
    means = {n: torch.stack(c).mean(0) for n, c in chunks.items()}
    errors = {n: torch.stack(c).std(0) / len(c) ** 0.5 for n, c in chunks.items()}
    gap = (means["dreg"] - means["standard"]).abs()
    assert (gap < 5 * (errors["dreg"] ** 2 + errors["standard"] ** 2).sqrt() + 1e-4).all(), (means, errors)


def test_the_output_bias_starts_at_the_logit_of_the_pixel_means():
    model = tiny_vae()
    means = torch.tensor([0.0, 0.5, 0.9, 1.0]).repeat(196)
    init_output_bias(model, means)
    torch.testing.assert_close(torch.sigmoid(model.decoder[-1].bias), means.clamp(1e-3, 1 - 1e-3))


def test_training_sets_the_output_bias_from_the_training_split(tmp_path):
    make_mnist(tmp_path / "data", n_train=100, n_test=20)
    cfg = load_config(None, [f"data.root={tmp_path / 'data'}", "data.download=false", "model.hidden_dims=[16]",
                             "model.latent_dim=2", "model.output_bias_init=pixel_means", "train.epochs=1",
                             "train.device=cpu", f"output.dir={tmp_path / 'run'}"])
    state = torch.load(train(cfg).run_dir / "checkpoints" / "last.pt", weights_only=True)
    bias = state["model"]["decoder.2.bias"].reshape(28, 28)
    # the synthetic digits never touch the corner pixels: logit(1e-3) = -6.9 there, a few Adam steps later
    assert bias[0, 0] < -6.5 and bias[27, 27] < -6.5
    # where the training images have ink the bias is far above the corners (torch's init is within +-0.25)
    assert bias.max() > -3
