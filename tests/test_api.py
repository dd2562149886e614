"""The Python API (`from vae import load`) and eval/latents.npz: against hand-written forward passes and
evaluate.py's own numbers; the README's examples run as written."""
import os
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import REPO

from vae import UserError, load
from vae.data.load import load_data


def hand_mlp(state: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """The MLP under `prefix` of a state dict: Linear layers with ReLU between them, written out."""
    layers = sorted({int(k.split(".")[1]) for k in state if k.startswith(prefix + ".")})
    for n, i in enumerate(layers):
        x = F.linear(x, state[f"{prefix}.{i}.weight"], state[f"{prefix}.{i}.bias"])
        x = x.clamp(min=0) if n < len(layers) - 1 else x
    return x


@pytest.fixture(scope="module")
def run(evaluated):
    return evaluated[4][0]


@pytest.fixture(scope="module")
def test_images(run):
    model = load(run, device="cpu")
    return load_data(model.config.data, torch.device("cpu")).test.images[:, 0]  # (200, 28, 28) uint8


def test_reconstruct_is_decode_of_the_posterior_mean_in_every_layout(run, test_images):
    model = load(run, device="cpu")
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    x = test_images[:5].float() / 255
    mu = hand_mlp(state, "encoder", x.reshape(5, 784)).chunk(2, dim=-1)[0]
    expected = torch.sigmoid(hand_mlp(state, "decoder", mu))  # (5, 784)
    torch.testing.assert_close(model.encode(test_images[:5])[0], mu)
    torch.testing.assert_close(model.code(test_images[:5]), mu)  # one layer: the decoder reads the posterior mean
    for images in (test_images[:5], test_images[:5].numpy(), x.reshape(5, 784), x.reshape(5, 1, 28, 28)):
        out = model.reconstruct(images)
        assert out.shape == torch.as_tensor(images).shape and out.dtype == torch.float32
        torch.testing.assert_close(out.reshape(5, 784), expected)
    torch.testing.assert_close(model.reconstruct(test_images[0]), expected[0].reshape(28, 28))  # one uint8 image


def test_decode_and_sample_give_bernoulli_means_of_the_prior_draws(run):
    model = load(run, device="cpu")
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model.decode(z), torch.sigmoid(hand_mlp(state, "decoder", z)).reshape(6, 1, 28, 28))
    samples = model.sample(6, seed=3)  # z ~ N(0, I) from a generator seeded with 3: the same z
    torch.testing.assert_close(samples, model.decode(z))
    assert torch.equal(model.sample(6, seed=3), samples) and not torch.equal(model.sample(6, seed=4), samples)


def test_nll_is_evaluate_pys_number_and_latents_npz_holds_its_codes(evaluated, run, test_images):
    model, metrics = load(run / "checkpoints" / "best.pt", device="cpu"), evaluated[4][1]  # what evaluate.py ran on
    saved = np.load(run / "eval" / "latents.npz")
    assert str(saved["split"]) == "test" and saved["mu"].shape == (200, 4) and saved["label"].dtype == np.int64
    # evaluate.py ran with eval.iwae_samples=64 and eval.seed 0: the same estimator, the same draws
    nll = model.nll(test_images, k=64)
    np.testing.assert_allclose(nll.numpy(), saved["nll_iwae"], rtol=0, atol=1e-4)
    mu, logvar = model.encode(test_images)
    np.testing.assert_allclose(saved["mu"], mu.numpy(), atol=1e-6)
    np.testing.assert_allclose(saved["logvar"], logvar.numpy(), atol=1e-6)
    np.testing.assert_array_equal(saved["label"], load_data(model.config.data, torch.device("cpu")).test.labels)
    assert saved["negative_elbo"].mean() == pytest.approx(metrics["negative_elbo"], rel=1e-6)  # float32 sums
    assert saved["nll_iwae"].mean() == pytest.approx(metrics["nll_iwae"], rel=1e-6)
    csv = np.loadtxt(run / "eval" / "latents.csv", delimiter=",", skiprows=1)
    header = (run / "eval" / "latents.csv").read_text().splitlines()[0]
    assert header == "index,label,mu_0,mu_1,mu_2,mu_3"
    np.testing.assert_allclose(csv[:, 2:], saved["mu"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(csv[:, 1], saved["label"])


@pytest.mark.parametrize("images, message", [
    (torch.zeros(3, 32, 32, dtype=torch.uint8), r"images must be one of \(1, 28, 28\), \(784,\), \(28, 28\), or N of "
                                                r"them \(N, ...\); got shape \(3, 32, 32\)"),
    (torch.zeros(0, 784), r"got shape \(0, 784\)"),
    (torch.full((2, 784), 2.0), r"float images must lie in \[0, 1\]"),
    (torch.zeros(2, 784, dtype=torch.int64), r"must be uint8 \(0..255\) or float \(0..1\); got torch.int64"),
])
def test_images_of_another_shape_or_kind_are_refused_in_one_line(run, images, message):
    with pytest.raises(UserError, match=message):
        load(run, device="cpu").reconstruct(images)


def test_bad_paths_and_arguments_are_refused_in_one_line(run, tmp_path):
    (tmp_path / "empty_run").mkdir()
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "other.pt")
    for path, message in [(tmp_path / "empty_run", "without checkpoints/last.pt"),
                          (tmp_path / "nothing", "checkpoint not found"),
                          (tmp_path / "other.pt", "not a checkpoint of this project")]:
        with pytest.raises(UserError, match=message):
            load(path)
    with pytest.raises(UserError, match="device must be"):
        load(run, device="tpu")
    model = load(run, device="cpu")
    with pytest.raises(UserError, match=r"z must be \(N, 4\)"):
        model.decode(torch.zeros(2, 3))
    with pytest.raises(UserError, match="n must be >= 1"):
        model.sample(0)


def readme_block(heading: str) -> str:
    """The first ```python block after a README heading."""
    text = (REPO / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", text[text.index(heading):], re.S).group(1)


@pytest.mark.parametrize("heading", ["### Python API", "### Latents for your own analysis",
                                     "### Scoring new images from Python"])
def test_the_readme_examples_run_as_written(run, tmp_path, heading):
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "mnist").symlink_to(run)  # the README's run directory
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(readme_block(heading), f"README.md {heading}", "exec"), {})
    finally:
        os.chdir(cwd)
