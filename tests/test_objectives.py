"""Training options still report the plain negative ELBO: bf16, compile, binarization, beta, IWAE, conv, two layers."""
from pathlib import Path

import pytest
import torch
from conftest import with_, without_timing

from vae.data.load import load_data
from vae.errors import UserError
from vae.evaluate.heldout import evaluate
from vae.run import rundir
from vae.run.checkpoint import load_checkpoint
from vae.train.loop import train
from vae.train.plan import plan_run


@pytest.mark.parametrize("option", [{"precision": "bf16"}, {"compile": True}])
def test_bf16_and_compiled_training_follow_the_fp32_autograd_run(tiny_cfg, tmp_path, option):
    plain = train(with_(tiny_cfg, train={"fast_step": False}, output={"dir": str(tmp_path / "plain")}))
    other = train(with_(tiny_cfg, train=option, output={"dir": str(tmp_path / "other")}))
    for a, b in zip(plain.rows, other.rows):
        # compiled kernels reorder float sums; bf16 rounds the products to 8 mantissa bits
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4 if "compile" in option else 2e-2)
    state, _ = load_checkpoint(other.run_dir / "checkpoints" / "last.pt")
    assert state["model"].keys() == plain.model.state_dict().keys()  # the plain model's weights, never a wrapper's
    assert all(v.dtype == torch.float32 for v in state["model"].values())


def test_dynamic_binarization_trains_on_fresh_draws_and_measures_one_fixed_test_set(tiny_cfg, tmp_path):
    cfg = with_(tiny_cfg, data={"binarize": "dynamic"})
    a = train(cfg)
    b = train(with_(cfg, output={"dir": str(tmp_path / "again")}))
    assert without_timing(a.rows) == without_timing(b.rows)  # the draws are seeded
    plain = train(with_(tiny_cfg, output={"dir": str(tmp_path / "plain")}))
    assert a.rows[0]["train_loss"] != plain.rows[0]["train_loss"]
    test = load_data(cfg.data, torch.device("cpu")).test
    assert evaluate(a.model, test, cfg.train.seed)["loss"] == pytest.approx(a.rows[-1]["test_loss"])


@pytest.mark.parametrize("loss", [{"iwae_k": 5}, {"beta": 0.5, "kl_warmup_epochs": 1, "free_bits": 0.2},
                                  {"iwae_k": 3, "gradient": "dreg", "kl_warmup_epochs": 1}, {"gradient": "dreg"}],
                         ids=["iwae", "beta-warmup-free-bits", "dreg", "stl"])
def test_objective_options_train_and_report_the_negative_elbo(tiny_cfg, tmp_path, loss):
    plain = train(with_(tiny_cfg, output={"dir": str(tmp_path / "plain")}))
    other = train(with_(tiny_cfg, loss=loss, output={"dir": str(tmp_path / "other")}))
    for a, b in zip(plain.rows, other.rows):
        # the columns are the plain negative ELBO's terms, not the objective (beta 0.5, free bits, IWAE)
        assert b["train_loss"] == pytest.approx(b["train_recon"] + b["train_kl"])
        assert b["test_loss"] == pytest.approx(b["test_recon"] + b["test_kl"])
        assert b["train_loss"] != a["train_loss"]
    assert other.rows[-1]["test_loss"] < other.rows[0]["test_loss"]


def test_the_conv_model_trains_and_resumes(tiny_cfg, tmp_path):
    cfg = with_(tiny_cfg, model={"arch": "conv", "channels": (8, 16), "res_blocks": 1}, train={"epochs": 3})
    rows = train(cfg).rows
    assert rows[-1]["test_loss"] < rows[0]["test_loss"] - 20
    split = with_(cfg, output={"dir": str(tmp_path / "split")})
    first = train(with_(split, train={"epochs": 2}))
    resumed = train(split, resume=first.run_dir)
    assert without_timing(resumed.rows) == without_timing(rows)
    with pytest.raises(UserError, match="model.channels"):
        train(with_(split, model={"channels": (8, 8)}, train={"epochs": 4}), resume=first.run_dir)


@pytest.mark.parametrize("loss", [{}, {"iwae_k": 3}, {"iwae_k": 3, "kl_warmup_epochs": 2}])
def test_two_stochastic_layers_train_and_resume(tiny_cfg, tmp_path, loss):
    cfg = with_(tiny_cfg, model={"latent2_dim": 3, "hidden2_dims": (16,)}, loss=loss, train={"epochs": 3})
    rows = train(cfg).rows
    assert rows[-1]["test_loss"] < rows[0]["test_loss"] - 20
    model = train(with_(cfg, output={"dir": str(tmp_path / "again")})).model
    test = load_data(cfg.data, torch.device("cpu")).test
    # the reported nats are the two-layer negative ELBO (one sample), whatever the objective
    nats = evaluate(model, test, cfg.train.seed)
    assert rows[-1]["test_loss"] == pytest.approx(nats["loss"])
    # z2's part of the rate, analytic given z1: KL(q(z2|z1) || N(0, I)) >= 0, in metrics.csv
    assert rows[-1]["test_kl_z2"] == pytest.approx(nats["kl_z2"]) and nats["kl_z2"] > 0
    assert [r["test_kl_z2"] for r in rundir.read_metrics(Path(cfg.output.dir))] == \
        pytest.approx([r["test_kl_z2"] for r in rows])
    split = with_(cfg, output={"dir": str(tmp_path / "split")})
    resumed = train(split, resume=train(with_(split, train={"epochs": 2})).run_dir)
    assert without_timing(resumed.rows) == without_timing(rows)


def test_free_bits_apply_to_both_stochastic_layers(tiny_cfg):
    from vae.model.vae import build_model
    from vae.train.objective import objective_nats
    cfg = with_(tiny_cfg, model={"latent2_dim": 3, "hidden2_dims": (16,)}, loss={"free_bits": 50.0})
    model = build_model(cfg.model)
    x = torch.rand(8, 784)
    out = model(x, torch.randn(1, 8, model.noise_dim))
    objective, terms = objective_nats(out.logits, x, out.rate, cfg.loss, 1.0)
    # every one of the 4 + 3 dimensions is far under 50 nats, so each counts as 50
    torch.testing.assert_close(objective, terms.reconstruction.sum() + 8 * 7 * 50.0)


@pytest.mark.parametrize("precision, warned", [("bf16", True), ("auto", False), ("fp32", False)])
def test_only_an_explicit_bf16_on_a_cpu_without_bf16_products_is_warned_of(tiny_cfg, monkeypatch, precision, warned):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    plan = plan_run(with_(tiny_cfg, train={"precision": precision}), None, False, torch.device("cpu"))
    assert any("emulated" in w for w in plan.warnings) == warned
