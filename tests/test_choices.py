"""Every prior and posterior through the whole project: train, resume exactly, evaluate, report, the API;
and the combinations that do not fit, refused in one line."""
from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch
from conftest import with_, without_timing

from vae import load
from vae.config.load import load_config
from vae.errors import UserError
from vae.evaluate.analyze import evaluate_checkpoint
from vae.train.loop import train

VAMP = {"prior": "vamp", "prior_components": 5}
CHOICES = {  # config sections of each case
    "mog": {"model": {"prior": "mog", "prior_components": 5}},
    "vamp": {"model": VAMP},
    "vamp, iwae-2 with dreg": {"model": VAMP, "loss": {"iwae_k": 2, "gradient": "dreg"}},
    "flow": {"model": {"posterior": "flow", "flow_steps": 2, "flow_hidden": 16}},
    "two layers, vamp": {"model": {**VAMP, "latent2_dim": 3, "hidden2_dims": (16,)}},
    "ladder, vamp": {"model": {**VAMP, "latent2_dim": 3, "hidden2_dims": (16,), "inference": "top_down"}},
    "gated ladder with skip, mog": {"model": {"prior": "mog", "prior_components": 5, "latent2_dim": 3,
                                              "hidden2_dims": (16,), "inference": "top_down", "skip": True,
                                              "activation": "glu"}},
}


@pytest.mark.parametrize("choice", CHOICES)
def test_each_choice_trains_resumes_exactly_and_is_evaluated_in_its_own_terms(tiny_cfg, tmp_path, choice):
    cfg = with_(tiny_cfg, **CHOICES[choice], train={"epochs": 2})
    whole = train(cfg)
    assert whole.rows[-1]["test_loss"] < whole.rows[0]["test_loss"]
    split = with_(cfg, output={"dir": str(tmp_path / "split")})
    resumed = train(split, resume=train(with_(split, train={"epochs": 1})).run_dir)
    assert without_timing(resumed.rows) == without_timing(whole.rows)

    m = evaluate_checkpoint(whole.run_dir / "checkpoints" / "last.pt", ["eval.iwae_samples=16"])
    assert m["kl"] == "monte_carlo" and m["kl_per_dim"] is None and "kl_per_dim" in m["not_defined"]
    assert (m["prior"], m["posterior"]) == (cfg.model.prior, cfg.model.posterior)
    if cfg.model.posterior == "gaussian" and not cfg.model.latent2_dim:
        # split against the model's own prior: two one-sample estimates of the rate
        rs = m["rate_split"]
        assert rs["sum"] == pytest.approx(m["rate"], rel=0.15, abs=0.5)
        assert rs["mutual_information"] <= rs["mutual_information_bound"]
    else:
        assert m["rate_split"] is None and m["not_defined"]["rate_split"]
    explorer = json.loads((whole.run_dir / "eval" / "explorer.json").read_text())
    assert (explorer["mixture"] is not None) == (cfg.model.prior != "normal")
    assert "not defined" in (whole.run_dir / "report.html").read_text()

    model = load(whole.run_dir, device="cpu")
    assert model.sample(6, seed=1).shape == (6, 1, 28, 28)
    assert torch.equal(model.sample(6, seed=1), model.sample(6, seed=1))
    images = torch.rand(2, 1, 28, 28)
    codes = model.code(images)  # what the API's decode takes: (z1, z2) under skip
    assert codes.shape == (2, cfg.model.latent_dim + (cfg.model.latent2_dim if cfg.model.skip else 0))
    torch.testing.assert_close(model.decode(codes), model.reconstruct(images))
    saved = np.load(whole.run_dir / "eval" / "latents.npz")  # each test image's code, z1's part its mu
    assert saved["code"].shape[1] == codes.shape[1] and np.array_equal(saved["code"][:, :cfg.model.latent_dim],
                                                                       saved["mu"])


def test_evaluate_py_prints_a_mixture_priors_numbers_without_a_kl_per_dimension(tiny_cfg, capsys):
    run = train(with_(tiny_cfg, model=CHOICES["mog"]["model"], train={"epochs": 1})).run_dir
    importlib.import_module("evaluate").main(["--checkpoint", str(run), "eval.iwae_samples=4"])
    out = capsys.readouterr().out
    assert "KL per dimension" in out and "not defined" in out and "KL per dim (nats)" not in out


def test_the_api_exports_the_vamp_prior_as_a_gaussian_mixture(tiny_cfg):
    run = train(with_(tiny_cfg, model=VAMP, train={"epochs": 1})).run_dir
    model = load(run, device="cpu")
    p = model.prior()
    assert p.mu.shape == p.logvar.shape == (5, 4) and torch.exp(p.log_weights).sum().item() == pytest.approx(1)
    mu, logvar = model.module.encode(model.module.prior.pseudo_inputs.clamp(0, 1))
    torch.testing.assert_close(p.mu, mu)
    torch.testing.assert_close(p.logvar, logvar)


@pytest.mark.parametrize("overrides, message", [
    (["model.posterior=flow", "model.latent2_dim=2"], "model.posterior.*one stochastic layer"),
    (["model.posterior=flow", "loss.gradient=dreg"], "loss.gradient.*model.posterior=gaussian"),
    (["model.prior=mog", "loss.free_bits=0.5"], "loss.free_bits.*model.prior=normal"),
    (["model.prior=gauss"], "model.prior"),
])
def test_choices_that_do_not_fit_are_refused_in_one_line(overrides, message):
    with pytest.raises(UserError, match=message) as error:
        load_config(None, overrides)
    assert "\n" not in str(error.value)


def test_evaluate_py_names_and_ranks_both_layers_dims_by_their_kl_under_skip(tiny_cfg, capsys):
    ladder = {"latent2_dim": 3, "hidden2_dims": (16,), "inference": "top_down", "skip": True}
    run = train(with_(tiny_cfg, model=ladder, train={"epochs": 1})).run_dir
    importlib.import_module("evaluate").main(["--checkpoint", str(run), "eval.iwae_samples=4"])
    out = capsys.readouterr().out
    m = json.loads((run / "eval" / "metrics.json").read_text())
    kl = {**{f"z1[{d}]": v for d, v in enumerate(m["kl_per_dim"])},
          **{f"z2[{d}]": v for d, v in enumerate(m["kl_per_dim_z2"])}}
    line = next(row for row in out.splitlines() if row.startswith("KL per dim (nats): "))
    assert line == "KL per dim (nats): " + ", ".join(f"{name} {kl[name]:.2f}" for name in sorted(kl, key=kl.get,
                                                                                               reverse=True))
    sliders = json.loads((run / "eval" / "explorer.json").read_text())["sliders"]  # z1's dims, then z2's, by KL
    assert [s["name"] for s in sliders] == sorted(kl, key=kl.get, reverse=True)
    assert [s["label"] for s in sliders] == [f"{kl[s['name']]:.1f} nats" for s in sliders]
