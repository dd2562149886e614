"""train.weight_decay: AdamW's decoupled decay of the layers' weights only; off, the optimizer is plain Adam."""
import pytest
import torch
from conftest import with_

from vae.config.schema import ModelConfig, TrainConfig
from vae.model.vae import build_model
from vae.run.checkpoint import load_checkpoint
from vae.train.loop import train
from vae.train.optimizer import make_optimizer


def test_without_weight_decay_the_optimizer_is_plain_adam_over_every_parameter():
    model = build_model(ModelConfig(hidden_dims=(8,), latent_dim=2))
    opt = make_optimizer(model, TrainConfig(lr=0.01))
    assert type(opt) is torch.optim.Adam and opt.defaults["weight_decay"] == 0
    assert [p for g in opt.param_groups for p in g["params"]] == list(model.parameters())


@pytest.mark.parametrize("prior", ["normal", "mog"])
def test_a_step_without_gradient_multiplies_each_weight_by_one_minus_lr_times_decay_and_leaves_the_rest(prior):
    """With zero gradients Adam's own update is 0, so one step is the decay alone: W -> W (1 - lr wd) for the weight
    matrices; the biases and the prior's parameters stay as they were, bit for bit."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(hidden_dims=(8,), latent_dim=2, latent2_dim=2, hidden2_dims=(4,), prior=prior,
                                    prior_components=3))
    lr, wd = 0.1, 0.5
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    opt = make_optimizer(model, TrainConfig(lr=lr, weight_decay=wd))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    weights = {name for name, p in model.named_parameters() if name.endswith("weight") and p.dim() == 2}
    assert len(weights) == 8 and len(list(model.named_parameters())) >= len(weights) + 8  # and 8 biases at least
    for name, p in model.named_parameters():
        if name in weights:
            torch.testing.assert_close(p.detach(), before[name] * (1 - lr * wd), rtol=1e-6, atol=0)
        else:
            assert torch.equal(p.detach(), before[name]), name


def test_a_run_with_weight_decay_ends_with_smaller_weights_than_one_without(tiny_cfg, tmp_path):
    norms = {}
    for wd in (0.0, 5.0):
        run = train(with_(tiny_cfg, train={"weight_decay": wd}, output={"dir": str(tmp_path / str(wd))})).run_dir
        state, cfg = load_checkpoint(run / "checkpoints" / "last.pt")
        assert cfg.train.weight_decay == wd
        norms[wd] = {k: v.norm().item() for k, v in state["model"].items() if k.endswith("weight") and v.dim() == 2}
    assert norms[0.0].keys() == norms[5.0].keys() and len(norms[0.0]) == 4
    assert all(norms[5.0][k] < 0.9 * norms[0.0][k] for k in norms[0.0])
