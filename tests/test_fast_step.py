"""The written-out MLP step (vae/train/fast_step.py) against autograd's: gradients, values, training, and which
runs take it."""
from types import SimpleNamespace

import pytest
import torch
import torch._dynamo
import torch.distributions as D
from conftest import on_each_step, with_, without_timing
from torch._dynamo.utils import counters

from vae.config.schema import Config, LossConfig, ModelConfig, TrainConfig
from vae.data.load import Splits
from vae.data.split import Split
from vae.model.vae import build_model
from vae.train.autograd_step import EagerStep
from vae.train.choose_step import make_step
from vae.train.distributed import World
from vae.train.fast_step import FastStep, MixtureLogProb, fits
from vae.train.loop import train
from vae.train.objective import objective_nats
from vae.train.step import Batches, Speed, StepOptions


def autograd_gradients(model, x, eps, kl_weight, scale, bf16=False, loss=LossConfig()):
    """The gradients and nats of the eager step's objective at noise eps (k, B, L), through autograd (under bf16
    autocast when asked, as optimizer_step runs it)."""
    model.zero_grad()
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        out = model(x, eps)
    logits = out.logits if out.logits.dtype == torch.float64 else out.logits.float()
    objective, terms = objective_nats(logits, x, out.rate, loss, kl_weight, (out.z, out.mu, out.logvar))
    (objective * scale).backward()
    nats = torch.stack([terms.total.sum(), terms.reconstruction.sum(), terms.kl.sum()])
    return {n: p.grad.clone() for n, p in model.named_parameters()}, nats.detach()


@pytest.mark.parametrize("activation, hidden, soft, kl_weight", [
    ("relu", (32,), False, 1.0), ("relu", (32, 16), True, 0.3), ("elu", (24, 16), False, 1.0),
    ("elu", (8,), True, 0.0)])
def test_the_written_out_gradients_are_autograds(activation, hidden, soft, kl_weight):
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_dims=hidden, latent_dim=5, activation=activation)).double()
    x = torch.rand(12, 784, dtype=torch.float64)
    x = x if soft else torch.bernoulli(x)
    eps = torch.randn(1, 12, 5, dtype=torch.float64)
    expected, expected_nats = autograd_gradients(model, x, eps, kl_weight, 1 / 12)
    model.zero_grad()
    step = FastStep(model, SimpleNamespace(step=lambda: None), None, StepOptions(LossConfig()))  # no Adam: the grads
    nats, logvar_sum = step.step(x, eps, kl_weight, 1 / 12)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-10, atol=1e-12, msg=name)
    torch.testing.assert_close(nats, expected_nats, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(logvar_sum, model.encode(x)[1].sum())


def latent_model(prior, dtype=torch.float64):
    """An ELU VAE with N(0, I) or a mixture prior, the mixture's variances and weights moved off their start."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_dims=(16,), latent_dim=4, activation="elu", prior=prior,
                                    prior_components=5)).to(dtype)
    if prior == "mog":
        with torch.no_grad():
            model.prior.logvar.normal_(0, 0.3)
            model.prior.logits.normal_()
    return model


@pytest.mark.parametrize("prior", ["normal", "mog"])
@pytest.mark.parametrize("k, gradient, kl_weight", [
    (1, "standard", 1.0), (1, "dreg", 0.3), (3, "standard", 1.0), (3, "standard", 0.3), (2, "dreg", 1.0),
    (3, "dreg", 0.3)])
def test_the_written_out_iwae_and_dreg_gradients_are_autograds(prior, k, gradient, kl_weight):
    """The sampled rate, the IWAE bound and DReG's gradient (a KL weight under 1 is warm-up), in float64."""
    model = latent_model(prior)
    x, eps = torch.bernoulli(torch.rand(6, 784, dtype=torch.float64)), torch.randn(k, 6, 4, dtype=torch.float64)
    loss = LossConfig(iwae_k=k, gradient=gradient)
    expected, expected_nats = autograd_gradients(model, x, eps, kl_weight, 1 / 6, loss=loss)
    model.zero_grad()
    step = FastStep(model, SimpleNamespace(step=lambda: None), None, StepOptions(loss))
    nats, _ = step.step(x, eps, kl_weight, 1 / 6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-10, atol=1e-12, msg=name)
    torch.testing.assert_close(nats, expected_nats, rtol=1e-12, atol=1e-10)


def test_the_written_out_mixture_is_torch_distributions():
    """MixtureLogProb's value and backward against autograd through torch.distributions' mixture."""
    prior = latent_model("mog").prior
    z, grad = torch.randn(7, 4, dtype=torch.float64, requires_grad=True), torch.randn(7, dtype=torch.float64)
    components = D.Independent(D.Normal(prior.mu, torch.exp(0.5 * prior.logvar)), 1)
    reference = D.MixtureSameFamily(D.Categorical(logits=prior.logits), components).log_prob(z)
    reference.backward(grad)
    expected = {name: p.grad.clone() for name, p in prior.named_parameters()}
    prior.zero_grad()
    log_prob = MixtureLogProb(prior)
    with torch.no_grad():
        torch.testing.assert_close(log_prob(z), reference, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(log_prob.backward(grad), z.grad, rtol=1e-10, atol=1e-12)
    for name, p in prior.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("activation", ["relu", "elu"])
def test_the_written_out_bf16_step_is_autocasts(activation):
    """With the products in bf16 as bf16 autocast has them: its nats, and its gradients to bf16's rounding."""
    torch.manual_seed(3)
    model = build_model(ModelConfig(hidden_dims=(64, 32), latent_dim=5, activation=activation))
    x, eps = torch.bernoulli(torch.rand(32, 784)), torch.randn(1, 32, 5)
    expected, expected_nats = autograd_gradients(model, x, eps, 1.0, 1 / 32, bf16=True)
    _, fp32_nats = autograd_gradients(model, x, eps, 1.0, 1 / 32)
    model.zero_grad()
    nats, _ = FastStep(model, SimpleNamespace(step=lambda: None), None, StepOptions(LossConfig(), bf16=True)).step(
        x, eps, 1.0, 1 / 32)
    torch.testing.assert_close(nats, expected_nats, rtol=1e-5, atol=0.0)
    assert (fp32_nats[2] - expected_nats[2]).abs() > 1e-4 * expected_nats[2]  # fp32's KL would fail the line above
    for name, p in model.named_parameters():  # the bf16 roundings of fp32 sums in another order differ by 1 ulp
        assert (p.grad - expected[name]).norm() < 5e-3 * expected[name].norm(), name


def test_the_written_out_bf16_iwae_step_with_the_mixture_is_autocasts():
    """mnist_cpu_hour's objective (mixture prior, IWAE k=2, DReG) with bf16 products: the mixture stays in fp32."""
    model, loss = latent_model("mog", torch.float32), LossConfig(iwae_k=2, gradient="dreg")
    x, eps = torch.bernoulli(torch.rand(32, 784)), torch.randn(2, 32, 4)
    expected, expected_nats = autograd_gradients(model, x, eps, 1.0, 1 / 32, bf16=True, loss=loss)
    model.zero_grad()
    nats, _ = FastStep(model, SimpleNamespace(step=lambda: None), None, StepOptions(loss, bf16=True)).step(
        x, eps, 1.0, 1 / 32)
    torch.testing.assert_close(nats, expected_nats, rtol=1e-5, atol=0.0)
    for name, p in model.named_parameters():
        assert (p.grad - expected[name]).norm() < 5e-3 * expected[name].norm(), name


def test_gradient_clipping_clips_the_written_out_gradients_as_autograds():
    torch.manual_seed(1)
    model = build_model(ModelConfig(hidden_dims=(16,), latent_dim=3)).double()
    x, eps = torch.bernoulli(torch.rand(6, 784, dtype=torch.float64)), torch.randn(1, 6, 3, dtype=torch.float64)
    expected, _ = autograd_gradients(model, x, eps, 1.0, 1 / 6)
    norm = torch.cat([g.flatten() for g in expected.values()]).norm()
    FastStep(model, SimpleNamespace(step=lambda: None), None, StepOptions(LossConfig(), grad_clip=0.5)).step(
        x, eps, 1.0, 1 / 6)
    assert norm > 0.5  # so the clip acts
    for name, p in model.named_parameters():
        # clip_grad_norm_'s factor is max_norm / (norm + 1e-6)
        torch.testing.assert_close(p.grad, expected[name] * 0.5 / (norm + 1e-6), rtol=1e-6, atol=1e-7, msg=name)


def test_a_run_on_the_written_out_step_follows_the_autograd_run(tiny_cfg, tmp_path, monkeypatch):
    steps = []
    on_each_step(monkeypatch, lambda step, *args: (steps.append(type(step)), step(*args)))
    fast = train(with_(tiny_cfg, output={"dir": str(tmp_path / "fast")}))
    eager = train(with_(tiny_cfg, train={"fast_step": False}, output={"dir": str(tmp_path / "eager")}))
    assert steps == [FastStep] * 20 + [EagerStep] * 20  # two epochs of 10 steps each
    for a, b in zip(without_timing(fast.rows), without_timing(eager.rows)):
        assert a.keys() == b.keys()
        for key in a:  # float32 sums in another order: the same to float32's precision over two epochs
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-5), key
    for (name, p), q in zip(fast.model.named_parameters(), eager.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("change, fast", [
    ({}, True), ({"model": {"activation": "elu", "hidden_dims": (8, 8)}}, True),
    ({"model": {"activation": "tanh"}}, False), ({"model": {"prior": "mog"}}, True),
    ({"model": {"likelihood": "logistic"}}, False), ({"model": {"latent2_dim": 2}}, False),
    ({"loss": {"iwae_k": 2}}, True), ({"loss": {"gradient": "dreg"}}, True), ({"loss": {"free_bits": 0.1}}, False),
    ({"model": {"prior": "vamp"}}, False), ({"model": {"posterior": "flow"}}, False),
    ({"model": {"arch": "conv"}}, False),
    ({"train": {"precision": "bf16"}}, True), ({"train": {"compile": True}}, True),
    ({"train": {"fast_step": False}}, False)])
def test_only_the_runs_it_writes_out_take_the_fast_step(change, fast):
    cfg = with_(Config(train=TrainConfig(device="cpu")), **change)
    model = build_model(cfg.model)
    opt = torch.optim.Adam(model.parameters())
    train_split = Split(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.long), ("0",))
    step = make_step(cfg, model, opt, Splits(train_split, None, train_split), World(), torch.device("cpu"),
                     Speed(cfg.train.precision == "bf16", 1, compiled=cfg.train.compile))
    assert isinstance(step, FastStep if fast else EagerStep)
    if fast and cfg.train.compile:  # batches of 128 from 4 images hold 4: those rows are compiled, not 128
        assert step.compile_rows == len(train_split)


class Tally:
    """A stand-in for EpochProgress that keeps what each step records."""

    def __init__(self):
        self.records = []

    def record(self, examples, nats, logvar_sum):
        self.records.append((examples, nats, logvar_sum))


@pytest.mark.parametrize("prior, loss", [("normal", LossConfig()), ("mog", LossConfig(iwae_k=2, gradient="dreg"))])
def test_the_fast_step_trains_on_the_eager_steps_draws_with_its_adam(prior, loss):
    """Three Adam steps on dynamically binarized batches: the same draws from the same stream, the same nats."""
    torch.manual_seed(2)
    split = Split(torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8), torch.zeros(20, dtype=torch.long), ("0",))
    batches = Batches(split, dynamic=True, k=loss.iwae_k, noise_dim=4)
    model = build_model(ModelConfig(hidden_dims=(16,), latent_dim=4, prior=prior, prior_components=3))
    twin = build_model(ModelConfig(hidden_dims=(16,), latent_dim=4, prior=prior, prior_components=3))
    twin.load_state_dict(model.state_dict())
    steps = [FastStep(model, torch.optim.Adam(model.parameters(), fused=True), batches, StepOptions(loss)),
             EagerStep(twin, torch.optim.Adam(twin.parameters(), fused=True), batches, StepOptions(loss))]
    tallies = []
    for step in steps:
        gen, tally = torch.Generator().manual_seed(5), Tally()
        for start in (0, 8, 12):
            step(torch.arange(start, start + 8), gen, 1.0, tally)
        tallies.append(tally.records)
    for (n_a, nats_a, lv_a), (n_b, nats_b, lv_b) in zip(*tallies):
        assert n_a == n_b == 8
        torch.testing.assert_close(nats_a, nats_b, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(lv_a, lv_b, rtol=1e-5, atol=1e-4)
    assert_same_adam(steps[0].opt, steps[1].opt, steps=3)


def assert_same_adam(opt, twin, steps):
    """Two Adams fed the same gradients up to float32's rounding, `steps` steps each.

    Their moments are sums of the gradients and their squares, so they agree to the rounding of the gradients'
    sums, which the two steps' kernels take in different orders (differently on each CPU): a few hundred units of
    float32's 6e-8 of the largest entry: they carry the check. The weights need not agree closer than Adam's steps:
    it moves each by about lr * m / sqrt(v), +-lr whatever the gradient's size, so a weight whose gradient cancels to
    the rounding's size can move either way; they are checked to within 2 lr a step only (a wrong lr, or a step
    too many, shows there).
    """
    for group, twin_group in zip(opt.param_groups, twin.param_groups):
        for p, q in zip(group["params"], twin_group["params"]):
            for moment in ("exp_avg", "exp_avg_sq"):
                a, b = opt.state[p][moment], twin.state[q][moment]
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item(), msg=moment)
            torch.testing.assert_close(p, q, rtol=0, atol=2 * group["lr"] * steps)


def test_the_compiled_fast_step_trains_as_the_eager_one_compiling_twice_at_most():
    """train.compile: the full batches' gradients compiled (once, and once more when the KL weight first changes,
    as in a warm-up), the short last batch eager; the same training to float32's precision."""
    torch.manual_seed(2)
    split = Split(torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8), torch.zeros(20, dtype=torch.long), ("0",))
    loss = LossConfig(iwae_k=2, gradient="dreg")
    batches = Batches(split, dynamic=True, k=2, noise_dim=4)
    model = build_model(ModelConfig(hidden_dims=(16,), latent_dim=4, prior="mog", prior_components=3))
    twin = build_model(ModelConfig(hidden_dims=(16,), latent_dim=4, prior="mog", prior_components=3))
    twin.load_state_dict(model.state_dict())
    compiled = FastStep(model, torch.optim.Adam(model.parameters(), fused=True), batches, StepOptions(loss), 8)
    eager = FastStep(twin, torch.optim.Adam(twin.parameters(), fused=True), batches, StepOptions(loss))
    tallies = []
    counters["stats"].clear()
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        for step in (compiled, eager):
            gen, tally = torch.Generator().manual_seed(5), Tally()
            for i, start in enumerate((0, 8, 16, 0, 8, 16)):  # batches of 8, 8 and 4
                step(torch.arange(start, min(start + 8, 20)), gen, min(1.0, 0.25 * (i + 1)), tally)
            tallies.append(tally.records)
    assert counters["stats"]["unique_graphs"] in (1, 2)  # compiled, and not again for each batch
    torch._dynamo.reset()
    for (_, nats_a, lv_a), (_, nats_b, lv_b) in zip(*tallies):
        torch.testing.assert_close(nats_a, nats_b, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(lv_a, lv_b, rtol=1e-5, atol=1e-4)
    assert_same_adam(compiled.opt, eager.opt, steps=6)


def test_a_process_that_trains_again_compiles_afresh(tiny_cfg, tmp_path):
    """A sweep's worker trains trial after trial, each its own widths: each run's graphs go with it, so that the next
    run's steps do not count towards torch's recompile limit (past it they would run uncompiled; here, fail)."""
    cfg = with_(tiny_cfg, train={"compile": True, "epochs": 1})
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        for width in (32, 16):
            before = counters["stats"]["unique_graphs"]
            train(with_(cfg, model={"hidden_dims": (width,)}, output={"dir": str(tmp_path / str(width))}))
            assert counters["stats"]["unique_graphs"] > before  # this run's step was compiled


def test_the_fast_step_is_for_one_process_on_the_cpu():
    cfg = Config()
    model = build_model(cfg.model)
    assert fits(cfg, model, 1, torch.device("cpu"))
    assert not fits(cfg, model, 2, torch.device("cpu"))  # torchrun: DDP averages autograd's gradients
    assert not fits(cfg, model, 1, torch.device("cuda"))  # a GPU replays autograd's step as a CUDA graph
