"""A corpus of malformed inputs through the command line's own entry points (in process, for speed).

Each must give one clear `error:` line on stderr, exit status 2, no traceback, and leave an
existing run directory exactly as it was. tests/test_cli.py runs a few of them as real processes.
"""
import hashlib
import importlib
import os
import pickle
import sys

import pytest
import torch
from conftest import make_mnist, write_idx

from vae.cli import run
from vae.config.schema import Config, DataConfig, ModelConfig, OutputConfig, TrainConfig
from vae.train.loop import train

BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n" \
                 "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n"

# name: (config file text or None, extra arguments, expected words in the error line)
CONFIGS = {
    "unknown key": ("train:\n  ephocs: 3\n", [], "did you mean 'train.epochs'"),
    "unknown section": ("trainer:\n  epochs: 3\n", [], "unknown config key 'trainer'"),
    "string epochs": ("train:\n  epochs: ten\n", [], "train.epochs must be int"),
    "float epochs": ("train:\n  epochs: 2.5\n", [], "train.epochs must be int"),
    "bool batch size": ("train:\n  batch_size: true\n", [], "train.batch_size must be int"),
    "list latent": ("model:\n  latent_dim: [4]\n", [], "model.latent_dim must be int"),
    "string hidden dims": ("model:\n  hidden_dims: wide\n", [], "model.hidden_dims must be a list"),
    "billion laughs": (BILLION_LAUGHS, [], "aliases are not allowed"),
    "huge latent": ("model:\n  latent_dim: 1000000000000\n", [], "model.latent_dim must be in"),
    "huge epochs": ("train:\n  epochs: 1000000000000000000000000000000\n", [], "train.epochs must be in"),
    "negative batch size": ("train:\n  batch_size: -64\n", [], "train.batch_size must be in"),
    "negative hidden size": ("model:\n  hidden_dims: [-400]\n", [], "model.hidden_dims must hold"),
    "zero latent": ("model:\n  latent_dim: 0\n", [], "model.latent_dim must be in"),
    "nan lr": ("train:\n  lr: .nan\n", [], "train.lr must be a finite number"),
    "infinite lr": ("train:\n  lr: .inf\n", [], "train.lr must be a finite number"),
    "negative grad clip": ("train:\n  grad_clip: -1\n", [], "train.grad_clip must be"),
    "unknown device": ("train:\n  device: gpu\n", [], "train.device must be auto, cpu"),
    "digit 11": ("viz:\n  digit: 11\n", [], "viz.digit must be a class index 0..9 of mnist, got 11"),
    "unknown class name": ("data:\n  dataset: fashion_mnist\nviz:\n  digit: trousers\n", [],
                           "viz.digit must be a class of fashion_mnist (T-shirt/top, Trouser, Pullover"),
    "unknown dataset": ("data:\n  dataset: cifar10\n", [], "data.dataset must be one of mnist, fashion_mnist, kmnist"),
    "empty file": ("", [], "is empty"),
    "top-level list": ("- train\n- model\n", [], "must hold a mapping"),
    "section not a mapping": ("train: 5\n", [], "section 'train' must be a mapping"),
    "unclosed bracket": ("model:\n  hidden_dims: [400\n", [], "not valid YAML"),
    "tab indentation": ("train:\n\tepochs: 3\n", [], "not valid YAML"),
    "deep nesting": ("a: " + "[" * 5000 + "]" * 5000, [], "nested too deeply"),
    "override without =": ("{}", ["train.epochs"], "must look like section.key=value"),
    "override unknown key": ("{}", ["train.epoch=3"], "did you mean 'train.epochs'"),
    "override bad yaml": ("{}", ["model.hidden_dims=[1,"], "not valid YAML"),
    "override nan lr": ("{}", ["train.lr=nan"], "train.lr must be a finite number"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory, mnist_root):
    """An existing run (2 epochs) that no malformed input may touch, and a scratch folder."""
    base = tmp_path_factory.mktemp("malformed")
    cfg = Config(data=DataConfig(root=str(mnist_root), download=False),
                 model=ModelConfig(hidden_dims=(16,), latent_dim=3),
                 train=TrainConfig(epochs=2, batch_size=128, device="cpu"),
                 output=OutputConfig(dir=str(base / "run")))
    train(cfg)
    return base, mnist_root


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(script, argv, monkeypatch, capsys):
    """Run train.py's or evaluate.py's main under the CLI wrapper: (exit status, stderr)."""
    main = importlib.import_module(script).main
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *map(str, argv)])
    with pytest.raises(SystemExit) as e:
        run(main)
    return e.value.code, capsys.readouterr().err


def assert_one_clear_line(code, err, expected):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err


@pytest.mark.parametrize("case", list(CONFIGS))
def test_malformed_config(world, tmp_path, monkeypatch, capsys, case):
    base, mnist_root = world
    text, extra, expected = CONFIGS[case]
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    before = snapshot(base)
    code, err = cli("train", ["--config", config, f"output.dir={base / 'run'}", *extra], monkeypatch, capsys)
    assert_one_clear_line(code, err, expected)
    assert snapshot(base) == before


def corrupt_checkpoints(good: bytes, tmp_path):
    """name -> (path of a bad --resume target, expected words)."""
    state = torch.load(__import__("io").BytesIO(good), weights_only=True)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    bad = {
        "zero bytes": (b"", "not a readable checkpoint"),
        "truncated": (good[: len(good) // 3], "not a readable checkpoint"),
        "random bytes": (os.urandom(5000), "not a readable checkpoint"),
        "yaml text": (b"model: weights\n", "not a readable checkpoint"),
        "future version": ({**state, "format_version": 99}, "format 99"),
        "missing keys": ({k: v for k, v in state.items() if k not in ("model", "rng")}, "missing model, rng"),
        "wrong tensor shapes": ({**state, "model": {k: v[..., :1] for k, v in state["model"].items()}},
                                "does not fit the VAE"),
        "invalid stored config": ({**state, "config": {"train": {"epochs": "x"}}}, "invalid config"),
        "code on load": ({**state, "extra": Payload()}, "would run on load"),
        "not a dict": ([1, 2, 3], "not a checkpoint of this project"),
        "stray average": ({**state, "average": {"model": state["model"], "updates": 3}}, "average of the weights"),
    }
    paths = {}
    for name, (content, expected) in bad.items():
        path = tmp_path / (name.replace(" ", "_") + ".pt")
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            torch.save(content, path, pickle_module=pickle)
        paths[name] = (path, expected)
    return paths


CHECKPOINT_CASES = ["zero bytes", "truncated", "random bytes", "yaml text", "future version", "missing keys",
                    "wrong tensor shapes", "invalid stored config", "code on load", "not a dict", "stray average"]


@pytest.mark.parametrize("script", ["train", "evaluate"])
@pytest.mark.parametrize("case", CHECKPOINT_CASES)
def test_malformed_checkpoint(world, tmp_path, monkeypatch, capsys, script, case):
    base, _ = world
    path, expected = corrupt_checkpoints((base / "run" / "checkpoints" / "last.pt").read_bytes(), tmp_path)[case]
    before = snapshot(base)
    flag = "--resume" if script == "train" else "--checkpoint"
    code, err = cli(script, [flag, path, f"output.dir={tmp_path / 'fork'}"] if script == "train"
                    else [flag, path], monkeypatch, capsys)
    assert_one_clear_line(code, err, expected)
    assert snapshot(base) == before and not (tmp_path / "pwned").exists()
    assert not (tmp_path / "fork").exists() and not (tmp_path / "eval").exists()


@pytest.mark.parametrize("args, expected", [
    (["--resume", "{tmp}/missing.pt"], "checkpoint not found"),
    (["--resume", "{tmp}"], "without checkpoints/last.pt"),
    (["--resume", "{run}", "model.latent_dim=5"], "trained with another config"),
    (["--resume", "{run}", "train.lr=0.5"], "trained with another config"),
    (["--config", "{config}", "output.dir={run}"], "already holds a run"),
    (["--config", "{config}", "output.dir={tmp}/new", "train.device=cuda:99"], "no such CUDA device"),
    (["--resume", "{run}/checkpoints/last.pt", "output.dir={run}/checkpoints/last.pt"], "not a directory"),
])
def test_wrong_targets(world, tmp_path, monkeypatch, capsys, args, expected):
    base, _ = world
    config = tmp_path / "ok.yaml"
    config.write_text("{}")
    args = [a.format(tmp=tmp_path, run=base / "run", config=config) for a in args]
    before = snapshot(base)
    code, err = cli("train", args, monkeypatch, capsys)
    assert_one_clear_line(code, err, expected)
    assert snapshot(base) == before


@pytest.mark.parametrize("args, expected", [
    (["--checkpoint", "{tmp}/nope.pt"], "checkpoint not found"),
    (["--checkpoint", "{run}/checkpoints/best.pt", "model.latent_dim=5"], "trained with another config"),
    (["--checkpoint", "{run}/checkpoints/best.pt", "eval.k=3"], "unknown config key"),
    (["--checkpoint", "{run}/checkpoints/best.pt", "eval.iwae_samples=0"], "eval.iwae_samples must be"),
    (["--checkpoint", "{run}/checkpoints/best.pt", "eval.split=validation"], "eval.split must be"),
])
def test_wrong_evaluations(world, tmp_path, monkeypatch, capsys, args, expected):
    base, _ = world
    before = snapshot(base)
    code, err = cli("evaluate", [a.format(tmp=tmp_path, run=base / "run") for a in args], monkeypatch, capsys)
    assert_one_clear_line(code, err, expected)
    assert snapshot(base) == before


DATA_DAMAGE = {
    "missing files": "MNIST files not found",
    "truncated images": "could not read the MNIST files",
    "wrong magic": "could not read the MNIST files",
    "count mismatch": "images but 50 labels",
    "label out of range": "labels outside 0..9",
    "not 28x28": "must be 28x28",
}


@pytest.mark.parametrize("damage", list(DATA_DAMAGE))
def test_malformed_data(world, tmp_path, monkeypatch, capsys, damage):
    base, _ = world
    root = tmp_path / "data"
    raw = make_mnist(root, n_train=60, n_test=20) / "MNIST" / "raw"
    images, labels = raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte"
    if damage == "missing files":
        labels.unlink()
    elif damage == "truncated images":
        images.write_bytes(images.read_bytes()[:3000])
    elif damage == "wrong magic":
        images.write_bytes(b"\x00\x00\x08\x09" + images.read_bytes()[4:])
    elif damage == "count mismatch":
        write_idx(labels, torch.zeros(50, dtype=torch.uint8))
    elif damage == "label out of range":
        write_idx(labels, torch.full((60,), 12, dtype=torch.uint8))
    else:
        write_idx(images, torch.zeros(60, 14, 14, dtype=torch.uint8))
    config = tmp_path / "ok.yaml"
    config.write_text(f"data: {{root: {root}, download: false}}\n")
    before = snapshot(base)
    code, err = cli("train", ["--config", config, f"output.dir={tmp_path / 'new'}"], monkeypatch, capsys)
    assert_one_clear_line(code, err, DATA_DAMAGE[damage])
    assert snapshot(base) == before and not (tmp_path / "new").exists()


def test_flags_may_stand_between_overrides(world, tmp_path, monkeypatch, capsys):
    """What `make train ARGS=--overwrite` produces: overrides, then a flag, then more overrides."""
    _, mnist_root = world
    config = tmp_path / "ok.yaml"
    config.write_text(f"data: {{root: {mnist_root}, download: false}}\nmodel: {{hidden_dims: [8], latent_dim: 2}}\n")
    main = importlib.import_module("train").main
    for flag in ([], ["--overwrite"]):  # the second run replaces the first
        main(["--config", str(config), f"output.dir={tmp_path / 'run'}", *flag, "train.epochs=1", "train.device=cpu"])
    assert capsys.readouterr().out.count("epochs 1..1") == 2
