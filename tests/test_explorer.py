"""eval/explorer.json, the live decoder's payload: its size, its latent map, and the conv model's reason."""
import base64
import json

import numpy as np
import torch
from conftest import digit_split

from vae.config.schema import Config, ModelConfig
from vae.evaluate.analyze import layer_rates
from vae.evaluate.explorer import explorer_data, save_explorer
from vae.evaluate.heldout import encode_split
from vae.evaluate.report import explorer_section
from vae.model.vae import build_model


def payload(model_cfg, n=200):
    torch.manual_seed(0)
    model = build_model(model_cfg).eval()
    split = digit_split(n, seed=0)
    post = encode_split(model, split, seed=0)
    return model, split, post, explorer_data(model, split, post, Config(model=model_cfg),
                                             post.kl_dims.mean(0)[:model_cfg.latent_dim].tolist())


def test_the_default_models_weights_fit_in_under_2_mb_as_float32():
    model, *_, data = payload(ModelConfig())  # 784-400-20
    decoder_floats = sum(p.numel() for p in model.decoder.parameters())
    size = len(json.dumps(data))
    assert decoder_floats * 4 * 4 / 3 < size < 2_000_000  # base64 float32 of every weight, and little else
    weights = np.frombuffer(base64.b64decode(data["decoder"][-1]["weight"]), dtype="<f4").reshape(784, 400)
    np.testing.assert_array_equal(weights, model.decoder[-1].weight.detach().numpy())


def test_the_map_is_the_top_two_principal_components_of_the_codes():
    _, _, post, data = payload(ModelConfig(hidden_dims=(16,), latent_dim=5))
    mu = post.mu.double().numpy()
    eigenvalues, vectors = np.linalg.eigh(np.cov(mu.T))  # ascending
    axes = np.array(data["map"]["axes"])
    for axis, vector in zip(axes, vectors[:, ::-1].T):  # the largest-variance direction first
        assert abs(abs(axis @ vector) - 1) < 1e-6  # the same direction up to sign
    np.testing.assert_allclose(data["map"]["origin"], mu.mean(0))
    points = np.frombuffer(base64.b64decode(data["map"]["points"]), dtype="<f4").reshape(-1, 2)
    np.testing.assert_allclose(points, (mu - mu.mean(0)) @ axes.T, atol=1e-5)
    order = [s["dim"] for s in data["sliders"]]
    kl = post.kl_dims.mean(0)
    assert order == kl.argsort(descending=True).tolist()  # most informative first


def test_a_conv_model_gets_a_reason_instead_of_a_decoder(tmp_path):
    model_cfg = ModelConfig(arch="conv", channels=(4, 8), latent_dim=3)
    model, split, post, data = payload(model_cfg, n=20)
    assert set(data) == {"absent"}
    (tmp_path / "eval").mkdir()
    save_explorer(model, split, post, Config(model=model_cfg), [0.0] * 3, tmp_path / "eval")
    text = explorer_section(tmp_path)
    assert "not ported" in text and "<script" not in text


def test_under_skip_the_sliders_rank_z1s_and_z2s_dims_together_by_their_kl_and_name_each_layer():
    cfg = ModelConfig(hidden_dims=(16,), latent_dim=3, latent2_dim=2, hidden2_dims=(8,), skip=True,
                      inference="top_down")
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    split = digit_split(100, seed=0)
    post = encode_split(model, split, seed=0)
    kl = post.kl_dims.double().mean(0)  # (3 + 2,): z1's, then z2's
    dim_kl, dim_kl_z2, _ = layer_rates(post, Config(model=cfg), kl.sum().item())  # as evaluate.py passes them
    data = explorer_data(model, split, post, Config(model=cfg), dim_kl, dim_kl_z2)
    assert [s["dim"] for s in data["sliders"]] == kl.argsort(descending=True).tolist()
    names = {s["dim"]: s["name"] for s in data["sliders"]}
    assert names == {0: "z1[0]", 1: "z1[1]", 2: "z1[2]", 3: "z2[0]", 4: "z2[1]"}
    for s in data["sliders"]:
        assert s["label"] == f"{kl[s['dim']]:.1f} nats"


def test_a_2d_code_of_two_layers_names_its_map_axes_z1_and_z2_and_a_mixtures_sliders_rank_by_variance():
    cfg = ModelConfig(hidden_dims=(16,), latent_dim=1, latent2_dim=1, hidden2_dims=(8,), skip=True,
                      inference="top_down", prior="mog", prior_components=3)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    split = digit_split(100, seed=0)
    post = encode_split(model, split, seed=0)
    dim_kl, dim_kl_z2, _ = layer_rates(post, Config(model=cfg), post.kl.double().mean().item())  # as evaluate.py
    assert dim_kl is None and dim_kl_z2 is None  # a mixture's KL is not a sum over dimensions
    data = explorer_data(model, split, post, Config(model=cfg), dim_kl, dim_kl_z2)
    assert data["map"]["names"] == ["z1[0]", "z2[0]"]
    variance = post.decoded.double().var(0)  # (2,): the code is (z1, z2)
    assert [s["dim"] for s in data["sliders"]] == variance.argsort(descending=True).tolist()
    assert [s["label"] for s in data["sliders"]] == [f"variance {variance[s['dim']]:.2f}" for s in data["sliders"]]
    assert sorted(s["name"] for s in data["sliders"]) == ["z1[0]", "z2[0]"]


def test_one_layers_dims_keep_their_plain_names():
    _, _, _, data = payload(ModelConfig(hidden_dims=(16,), latent_dim=2))
    assert data["map"]["names"] == ["z0", "z1"]
    assert sorted(s["name"] for s in data["sliders"]) == ["z0", "z1"]
