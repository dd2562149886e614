"""Fixtures: tiny synthetic MNIST written as real IDX files, read back through torchvision."""
from __future__ import annotations

import dataclasses
import struct
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import yaml

from vae.config.schema import CLASS_NAMES, Config, DataConfig, ModelConfig, OutputConfig, TrainConfig
from vae.data.split import Split
from vae.evaluate.analyze import evaluate_checkpoint
from vae.evaluate.estimators import importance_weighted_bound
from vae.model.distributions import gaussian_rate
from vae.train.loop import train

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


def write_idx(path: Path, data: torch.Tensor) -> None:
    """An IDX file of unsigned bytes (magic 0x0000080N, big-endian sizes), as MNIST ships them."""
    header = struct.pack(">I", 0x800 | data.dim()) + struct.pack(f">{data.dim()}I", *data.shape)
    path.write_bytes(header + bytes(data.to(torch.uint8).flatten().tolist()))


def synthetic_digits(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 28, 28) uint8 images whose class c is a cross at row/column 4 + 2c, jittered, and labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    images = torch.zeros(n, 28, 28)
    shift = torch.randint(-1, 2, (n,), generator=g)
    for i, (c, s) in enumerate(zip(labels.tolist(), shift.tolist())):
        k = 4 + 2 * c + s
        images[i, k:k + 2, 3:25] = 1
        images[i, 3:25, k:k + 2] = 1
    images *= 0.6 + 0.4 * torch.rand(n, 1, 1, generator=g)
    return (images * 255).round().to(torch.uint8), labels


def digit_split(n: int, seed: int) -> Split:
    """synthetic_digits as a Split of (n, 1, 28, 28) images named as MNIST's classes."""
    images, labels = synthetic_digits(n, seed)
    return Split(images[:, None], labels, CLASS_NAMES["mnist"])


def make_mnist(root: Path, n_train: int = 640, n_test: int = 200, folder: str = "MNIST") -> Path:
    """The four IDX files of synthetic digits in root/folder/raw/ (FashionMNIST and KMNIST share MNIST's layout)."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, n, seed in (("train", n_train, 0), ("t10k", n_test, 1)):
        images, labels = synthetic_digits(n, seed)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
    return root


def write_config(path: Path, mnist_root: Path, hidden: int = 32, **train) -> Path:
    """A YAML config for a small CPU run on the synthetic data; `train` keys go into its train section."""
    path.write_text(yaml.safe_dump({"data": {"root": str(mnist_root), "download": False},
                                    "model": {"hidden_dims": [hidden], "latent_dim": 4},
                                    "train": {"epochs": 2, "batch_size": 64, "device": "cpu", **train}}))
    return path


def gaussian_bound(log_lik, x, mu, logvar, k, chunk, generator):
    """importance_weighted_bound for q(z|x) = N(mu, diag(exp(logvar))), p(z) = N(0, I) and a
    likelihood log_lik(z (S, B, L), x) -> (S, B): (IWAE_k, k-sample ELBO), each (B,)."""
    def log_weight(eps):
        return log_lik(mu + torch.exp(0.5 * logvar) * eps, x) + gaussian_rate(mu, logvar, eps).log_ratio
    return importance_weighted_bound(log_weight, tuple(mu.shape), k, chunk, generator, mu.device, mu.dtype)


TIMING = "seconds"  # the metrics column that differs between identical runs


def with_(cfg, **sections):
    """cfg with some fields replaced, e.g. with_(cfg, train={"epochs": 4})."""
    return dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **values)
                                       for name, values in sections.items()})


def without_timing(rows):
    return [{k: v for k, v in r.items() if k != TIMING} for r in rows]


def on_each_step(monkeypatch, hook):
    """Make each training step of train() a call hook(step, index, gen, kl_weight, progress), whichever step
    make_step gives the run (autograd's or the written-out one); the hook calls step(...) to train."""
    import vae.train.loop
    real = vae.train.loop.make_step

    def make_step(*args, **kwargs):
        step = real(*args, **kwargs)
        return lambda *step_args: hook(step, *step_args)
    monkeypatch.setattr(vae.train.loop, "make_step", make_step)


def assert_same_parameters(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k



class ImageCollector(HTMLParser):
    """The <img> sources of a page, and any link that would reach the network."""

    def __init__(self):
        super().__init__()
        self.sources, self.links = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.sources.append(attrs["src"])
        for key in ("href", "src"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")):
                self.links.append(attrs[key])


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    return make_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture
def tiny_cfg(tmp_path, mnist_root) -> Config:
    """A small, fast CPU run on the synthetic data, writing to a fresh directory."""
    return Config(data=DataConfig(root=str(mnist_root), download=False),
                  model=ModelConfig(hidden_dims=(32,), latent_dim=4),
                  train=TrainConfig(epochs=2, batch_size=64, lr=3e-3, seed=3, device="cpu"),
                  output=OutputConfig(dir=str(tmp_path / "run")))


@pytest.fixture(scope="session")
def evaluated(tmp_path_factory, mnist_root):
    """(run dir, metrics) for 2-D and 4-D latent models trained 3 epochs, evaluated with k=64."""
    results = {}
    for latent in (2, 4):
        cfg = Config(data=DataConfig(root=str(mnist_root), download=False),
                     model=ModelConfig(hidden_dims=(32,), latent_dim=latent),
                     train=TrainConfig(epochs=3, batch_size=64, lr=3e-3, seed=1, device="cpu"),
                     output=OutputConfig(dir=str(tmp_path_factory.mktemp("eval") / "run")))
        run = train(cfg).run_dir
        results[latent] = run, evaluate_checkpoint(run / "checkpoints" / "best.pt", ["eval.iwae_samples=64"])
    return results
