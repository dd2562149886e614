import os
import pickle
import zipfile

import pytest
import torch

from vae.config.load import to_dict
from vae.config.schema import CLASS_NAMES, Config, DataConfig, ModelConfig, TrainConfig
from vae.errors import UserError
from vae.model.vae import VAE
from vae.run.checkpoint import (
    FORMAT_VERSION,
    evaluated_weights,
    load_checkpoint,
    load_state,
    resolve_checkpoint,
    run_dir_of,
    save_checkpoint,
)


def make_state(epoch=3, cfg=Config()):
    model = VAE(cfg.model)
    opt = torch.optim.Adam(model.parameters())
    return {"format_version": FORMAT_VERSION, "config": to_dict(cfg),
            "data": {"shape": [1, 28, 28], "classes": list(CLASS_NAMES["mnist"])}, "epoch": epoch,
            "best": {"loss": 101.5, "epoch": 2}, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "rng": {"device_type": "cpu", "generator": torch.Generator().get_state(),
                    "torch": torch.get_rng_state(), "cuda": []},
            "progress": None, "average": None}


def test_round_trip_is_exact(tmp_path):
    state = make_state()
    save_checkpoint(state, tmp_path / "last.pt")
    loaded, cfg = load_checkpoint(tmp_path / "last.pt")
    assert cfg == Config() and loaded["epoch"] == 3 and loaded["best"] == {"loss": 101.5, "epoch": 2}
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    assert torch.equal(loaded["rng"]["generator"], state["rng"]["generator"])


def test_a_format_1_checkpoint_is_upgraded_on_load(tmp_path):
    old = {k: v for k, v in make_state().items() if k not in ("progress", "best", "data")}  # as v1 wrote them
    torch.save({**old, "format_version": 1, "best_test_loss": 98.5}, tmp_path / "v1.pt")
    state, _ = load_checkpoint(tmp_path / "v1.pt")
    assert state["format_version"] == FORMAT_VERSION and state["progress"] is None
    assert state["best"] == {"loss": 98.5, "epoch": None} and "best_test_loss" not in state


def test_a_format_2_checkpoint_is_upgraded_on_load(tmp_path):
    old = {k: v for k, v in make_state().items() if k not in ("best", "data")}
    torch.save({**old, "format_version": 2, "best_test_loss": 99.5}, tmp_path / "v2.pt")
    state, _ = load_checkpoint(tmp_path / "v2.pt")
    # v2 chose best.pt on the test loss and did not record its epoch
    assert state["format_version"] == FORMAT_VERSION == 5 and state["best"] == {"loss": 99.5, "epoch": None}
    assert "best_test_loss" not in state


def test_a_format_3_checkpoint_is_upgraded_to_one_without_an_average(tmp_path):
    old = {k: v for k, v in make_state().items() if k not in ("average", "data")}
    torch.save({**old, "format_version": 3}, tmp_path / "v3.pt")
    state, _ = load_checkpoint(tmp_path / "v3.pt")
    assert state["format_version"] == FORMAT_VERSION and state["average"] is None
    assert evaluated_weights(state) is state["model"]


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist"])
def test_a_format_4_checkpoint_is_upgraded_to_28x28_grey_images_of_its_datasets_classes(tmp_path, dataset):
    old = {k: v for k, v in make_state(cfg=Config(data=DataConfig(dataset=dataset))).items() if k != "data"}
    torch.save({**old, "format_version": 4}, tmp_path / "v4.pt")
    state, _ = load_checkpoint(tmp_path / "v4.pt")
    assert state["data"] == {"shape": [1, 28, 28], "classes": list(CLASS_NAMES[dataset])}
    assert state["data"]["classes"][1] == ("1" if dataset == "mnist" else "Trouser")


@pytest.mark.parametrize("data", [None, {"shape": [28, 28], "classes": ["a"]}, {"shape": [1, 28, 28], "classes": []},
                                  {"shape": [1, 0, 28], "classes": ["a"]}, {"shape": [1, 28, 28], "classes": [3]}])
def test_a_malformed_record_of_the_data_is_one_line(tmp_path, data):
    torch.save({**make_state(), "data": data}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match=r"bad.pt is malformed: its record of the data .* is not an image shape and "
                                        r"class names"):
        load_checkpoint(tmp_path / "bad.pt")


def test_save_leaves_no_temporary_files(tmp_path):
    save_checkpoint(make_state(), tmp_path / "last.pt")
    save_checkpoint(make_state(epoch=4), tmp_path / "last.pt")
    assert os.listdir(tmp_path) == ["last.pt"]


def test_a_save_that_fails_midway_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(make_state(epoch=3), path)

    def broken_save(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(make_state(epoch=4), path)
    assert os.listdir(tmp_path) == ["last.pt"]
    assert load_checkpoint(path)[0]["epoch"] == 3


def test_run_directory_means_its_last_checkpoint(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    save_checkpoint(make_state(), tmp_path / "checkpoints" / "last.pt")
    assert resolve_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.pt"
    assert run_dir_of(tmp_path / "checkpoints" / "best.pt") == tmp_path.resolve()


class WritesAFile:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def bad_files(tmp_path):
    """(name, writer) pairs of files that are not loadable checkpoints."""
    full = tmp_path / "full.pt"
    save_checkpoint(make_state(), full)
    data = full.read_bytes()
    return {
        "zero bytes": lambda p: p.write_bytes(b""),
        "truncated": lambda p: p.write_bytes(data[: len(data) // 2]),
        "random bytes": lambda p: p.write_bytes(os.urandom(4096)),
        "text": lambda p: p.write_text("model: yes\n"),
        "not a dict": lambda p: torch.save([1, 2, 3], p),
        "no version": lambda p: torch.save({"model": {}}, p),
        "future version": lambda p: torch.save({**make_state(), "format_version": 99}, p),
        "missing keys": lambda p: torch.save({"format_version": FORMAT_VERSION, "config": {}}, p),
        "bad config": lambda p: torch.save({**make_state(), "config": {"model": {"latent_dim": -1}}}, p),
        "empty zip": lambda p: zipfile.ZipFile(p, "w").close(),
        "stray average": lambda p: torch.save({**make_state(), "average": {"model": {}, "updates": 1}}, p),
        "missing average": lambda p: torch.save(make_state(cfg=Config(train=TrainConfig(ema_decay=0.9))), p),
        "broken average": lambda p: torch.save({**make_state(cfg=Config(train=TrainConfig(ema_decay=0.9))),
                                                "average": {"model": {}}}, p),
    }


@pytest.mark.parametrize("kind", ["zero bytes", "truncated", "random bytes", "text", "not a dict",
                                  "no version", "future version", "missing keys", "bad config", "empty zip",
                                  "stray average", "missing average", "broken average"])
def test_bad_checkpoints_are_refused_in_one_line(tmp_path, kind):
    path = tmp_path / "bad.pt"
    bad_files(tmp_path)[kind](path)
    with pytest.raises(UserError) as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_missing_checkpoint_and_plain_directory_are_refused(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(UserError, match="without checkpoints/last.pt"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_that_runs_code_on_load_is_refused(tmp_path):
    victim = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pt"
    torch.save({**make_state(), "payload": WritesAFile(str(victim))}, path, pickle_module=pickle)
    with pytest.raises(UserError, match=r"refers to Python code \(\S*open\) that would run on load"):
        load_checkpoint(path)
    assert not victim.exists()


def test_weights_of_another_architecture_are_refused(tmp_path):
    state = make_state(cfg=Config(model=ModelConfig(latent_dim=8)))
    with pytest.raises(UserError, match="does not fit the VAE"):
        load_state(VAE(ModelConfig(latent_dim=20)), state["model"], tmp_path / "x.pt")
