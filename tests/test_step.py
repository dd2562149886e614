"""The training step: an update changes every weight, evaluation none; gradient clipping."""
import pytest
import torch
from conftest import assert_same_parameters, with_

from vae.data.mnist import load_dataset
from vae.evaluate.heldout import evaluate
from vae.model.likelihoods import vae_loss
from vae.model.vae import VAE, build_model
from vae.train.autograd_step import EagerStep
from vae.train.progress import EpochProgress
from vae.train.step import Batches, StepOptions


def eager_step(model, opt, split, cfg):
    batches = Batches(split, cfg.data.binarize == "dynamic", cfg.loss.iwae_k, model.noise_dim)
    return EagerStep(model, opt, batches, StepOptions(cfg.loss, grad_clip=cfg.train.grad_clip))


def test_a_training_step_changes_weights_and_evaluation_does_not(tiny_cfg):
    train_split, test_split = load_dataset(tiny_cfg.data.root, False, torch.device("cpu"))
    torch.manual_seed(0)
    model = VAE(tiny_cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(model, test_split, seed=0)
    assert_same_parameters(before, model.state_dict())
    step = eager_step(model, torch.optim.Adam(model.parameters(), lr=1e-3), train_split, tiny_cfg)
    gen = torch.Generator().manual_seed(0)
    progress = EpochProgress.begin(len(train_split), gen)
    index = progress.remaining(64)[0]
    x, eps = step.batches.draw(index, torch.Generator().set_state(gen.get_state()))  # the step's own draws
    step(index, gen, 1.0, progress)
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    progress.merge()
    assert progress.step == 1 and progress.seen == 64
    # the recorded nats are the negative ELBO of the drawn batch under the weights before the update
    model.load_state_dict(before)
    with torch.no_grad():
        out = model(x, eps.transpose(0, 1))
        terms = vae_loss(out.logits, x, out.rate)
    assert progress.means()["loss"] == pytest.approx(terms.total.double().mean().item(), rel=1e-6)
    assert progress.means()["kl"] == pytest.approx(terms.kl.double().mean().item(), rel=1e-6)


def test_grad_clip_bounds_the_gradient_norm(tiny_cfg):
    train_split, _ = load_dataset(tiny_cfg.data.root, False, torch.device("cpu"))

    def grad_norm(clip):
        torch.manual_seed(0)
        model = VAE(tiny_cfg.model)
        step = eager_step(model, torch.optim.Adam(model.parameters()), train_split,
                          with_(tiny_cfg, train={"grad_clip": clip}))
        step(torch.arange(64), torch.Generator().manual_seed(0), 1.0, EpochProgress(torch.arange(64)))
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
    assert grad_norm(0.0) > 10 and grad_norm(0.5) == pytest.approx(0.5, rel=1e-4)


def test_a_dynamic_batch_is_a_bernoulli_draw_of_each_pixel(tiny_cfg):
    split = load_dataset(tiny_cfg.data.root, False, torch.device("cpu"))[0]
    batches = Batches(split, dynamic=True, k=2, noise_dim=4)
    index = torch.tensor([3] * 4000)  # one image drawn 4000 times
    x, noise = batches.draw(index, torch.Generator().manual_seed(0))
    assert set(x.unique().tolist()) <= {0.0, 1.0} and noise.shape == (4000, 2, 4)
    p = split.pixels(index[:1])[0]
    # each pixel's frequency of ones is its intensity (binomial standard error <= 0.008)
    assert (x.mean(0) - p).abs().max() < 0.04
    assert torch.equal(Batches(split, False, 2, 4).draw(index[:2], torch.Generator())[0], split.pixels(index[:2]))


@pytest.mark.parametrize("sections", [
    {"model": {"latent2_dim": 3, "hidden2_dims": (8,), "inference": "top_down", "prior": "mog", "prior_components": 3},
     "loss": {"iwae_k": 2}},
    {"loss": {"iwae_k": 2, "gradient": "dreg"}},  # DReG's hook on z, inside the compiled function
], ids=["ladder", "dreg"])
def test_the_compiled_autograd_step_takes_the_eager_step_s_gradients_through_a_warm_up(tiny_cfg, sections):
    """autograd's step compiled whole, model and likelihood together, against the same step eager: three steps at
    three KL weights (a warm-up's) from the same weights and draws leave the same weights and nats."""
    train_split, _ = load_dataset(tiny_cfg.data.root, False, torch.device("cpu"))
    cfg = with_(tiny_cfg, **sections)
    models, steps, tallies = [], [], []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = build_model(cfg.model)
        batches = Batches(train_split, True, 2, model.noise_dim)
        steps.append(EagerStep(model, torch.optim.Adam(model.parameters(), lr=1e-3), batches,
                               StepOptions(cfg.loss), compiled=compiled))
        models.append(model)
        tallies.append(EpochProgress.begin(len(train_split), torch.Generator().manual_seed(0)))
    for weight in (0.25, 0.5, 1.0):
        for step, tally in zip(steps, tallies):
            step(torch.arange(64), torch.Generator().manual_seed(1), weight, tally)
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    for tally in tallies:
        tally.merge()
    torch.testing.assert_close(tallies[0].sums, tallies[1].sums, rtol=1e-5, atol=1e-2)
