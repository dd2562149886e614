"""train(cfg): the run directory it writes, the loop's numbers, best.pt, divergence, validation."""
import json

import pytest
import torch
import yaml
from conftest import TIMING, assert_same_parameters, with_, without_timing

import vae.train.loop
from vae.config.load import from_dict, to_dict
from vae.data.load import load_data
from vae.data.mnist import load_dataset
from vae.errors import UserError
from vae.evaluate.heldout import evaluate
from vae.model.likelihoods import vae_loss
from vae.model.vae import VAE
from vae.run import rundir
from vae.run.checkpoint import load_checkpoint
from vae.train.loop import train


def test_a_run_writes_its_whole_directory(tiny_cfg):
    result = train(tiny_cfg, argv=["train.py", "--config", "x.yaml"])
    run = result.run_dir
    assert from_dict(yaml.safe_load((run / "config.yaml").read_text())) == tiny_cfg
    info = json.loads((run / "run.json").read_text())
    assert info["argv"] == ["train.py", "--config", "x.yaml"] and info["device"] == "cpu"
    assert {"torch", "torchvision", "python", "git_commit", "started_at"} <= info.keys()

    rows = rundir.read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2] and rows == result.rows
    assert list(rows[0]) == [c for c in rundir.METRIC_COLUMNS if c not in rundir.OPTIONAL_COLUMNS]  # no val split
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert header == ",".join(rundir.METRIC_COLUMNS)  # the val columns are there, empty
    for r in rows:
        assert r["train_loss"] == pytest.approx(r["train_recon"] + r["train_kl"])
        assert r["test_loss"] == pytest.approx(r["test_recon"] + r["test_kl"])
        assert r["test_kl"] > 0 and r[TIMING] > 0

    images = sorted(p.name for p in (run / "images").iterdir())
    assert images == ["digit2_epoch001.png", "digit2_epoch002.png", "loss_curves.png",
                      "recon_epoch001.png", "recon_epoch002.png",
                      "samples_epoch001.png", "samples_epoch002.png"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    state, cfg = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 2 and cfg == tiny_cfg
    best = min(rows, key=lambda r: r["test_loss"])  # no validation split: best.pt is chosen on the test set
    assert state["best"] == {"loss": best["test_loss"], "epoch": best["epoch"]} == result.best
    assert not any(k.startswith("val_") for r in rows for k in r)


def test_viz_every_skips_epochs_but_always_draws_the_last(tiny_cfg):
    run = train(with_(tiny_cfg, train={"epochs": 3}, viz={"every": 2, "digit": 5})).run_dir
    assert sorted(p.name for p in (run / "images").glob("digit*")) == ["digit5_epoch002.png",
                                                                         "digit5_epoch003.png"]
    assert (run / "images" / "loss_curves.png").is_file()


def test_the_loss_curves_are_drawn_every_curves_every_epochs_and_where_a_run_stops(tiny_cfg, monkeypatch):
    drawn = []
    monkeypatch.setattr(vae.train.loop, "plot_loss_curves", lambda rows, path: drawn.append(rows[-1]["epoch"]))
    train(with_(tiny_cfg, train={"epochs": 5}, viz={"curves_every": 2}))
    assert drawn == [2, 4, 5]  # and after the last

    class Pruned(Exception):
        pass

    def prune(row, last):  # a sweep's pruner, stopping the run after its third epoch
        if row["epoch"] == 3:
            raise Pruned
    drawn.clear()
    with pytest.raises(Pruned):
        train(with_(tiny_cfg, train={"epochs": 5}, viz={"curves_every": 2}, output={"dir": tiny_cfg.output.dir + "2"}),
              after_epoch=prune)
    assert drawn == [2, 3]  # brought up to the epoch it stopped after


def test_training_lowers_the_loss_on_learnable_data(tiny_cfg):
    rows = train(with_(tiny_cfg, train={"epochs": 4})).rows
    assert rows[-1]["test_loss"] < rows[0]["test_loss"] - 20
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_evaluation_is_repeatable(tiny_cfg):
    _, test_split = load_dataset(tiny_cfg.data.root, False, torch.device("cpu"))
    model = VAE(tiny_cfg.model)
    assert evaluate(model, test_split, seed=4) == evaluate(model, test_split, seed=4)
    assert evaluate(model, test_split, seed=4) != evaluate(model, test_split, seed=5)


def test_same_seed_gives_the_same_run_and_another_seed_does_not(tiny_cfg, tmp_path):
    a = train(tiny_cfg)
    b = train(with_(tiny_cfg, output={"dir": str(tmp_path / "b")}))
    c = train(with_(tiny_cfg, output={"dir": str(tmp_path / "c")}, train={"seed": 4}))
    assert without_timing(a.rows) == without_timing(b.rows) != without_timing(c.rows)
    assert_same_parameters(a.model.state_dict(), b.model.state_dict())


def test_best_checkpoint_is_one_consistent_moment(tiny_cfg, tmp_path, monkeypatch):
    import vae.train.loop
    scripted = iter([5.0, 1.0, 3.0])  # test losses per epoch: the best epoch (2) is not the last

    def evaluate_scripted(*args):
        return {**evaluate(*args), "loss": next(scripted)}
    monkeypatch.setattr(vae.train.loop, "evaluate", evaluate_scripted)
    result = train(with_(tiny_cfg, train={"epochs": 3}))
    monkeypatch.undo()
    best, _ = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")
    assert best["epoch"] == 2 and best["best"] == {"loss": 1.0, "epoch": 2}
    # The same weights, optimizer state and RNG as a run that stopped after epoch 2.
    two, _ = load_checkpoint(train(with_(tiny_cfg, output={"dir": str(tmp_path / "two")})).run_dir)
    assert_same_parameters(best["model"], two["model"])
    assert_same_parameters(best["optimizer"]["state"][0], two["optimizer"]["state"][0])
    assert torch.equal(best["rng"]["generator"], two["rng"]["generator"])


def test_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_cfg, monkeypatch):
    import vae.train.objective
    run = train(tiny_cfg).run_dir
    good = (run / "checkpoints" / "last.pt").read_bytes()
    calls = iter(range(1000))

    def poisoned(*args):  # the 4th step of the resumed epoch 3 gets a NaN KL
        terms = vae_loss(*args)
        return terms._replace(kl=terms.kl * float("nan")) if next(calls) == 3 else terms
    monkeypatch.setattr(vae.train.objective, "vae_loss", poisoned)  # the training objective's, not evaluation's
    with pytest.raises(UserError, match="diverged at epoch 3, step 4: KL not finite"):
        train(with_(tiny_cfg, train={"epochs": 3, "fast_step": False}), resume=run)  # autograd's step: poisoned
    assert (run / "checkpoints" / "last.pt").read_bytes() == good
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2]


def test_config_yaml_records_overrides_for_a_later_resume(tiny_cfg):
    run = train(with_(tiny_cfg, model={"hidden_dims": (16, 8)})).run_dir
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["hidden_dims"] == [16, 8]
    assert to_dict(load_checkpoint(run)[1])["model"]["hidden_dims"] == [16, 8]


def test_a_validation_split_chooses_best_pt_and_stops_early(tiny_cfg, tmp_path, monkeypatch, capsys):
    import vae.train.loop
    cfg = with_(tiny_cfg, data={"val_size": 100}, train={"epochs": 8, "patience": 2})
    val_losses = iter([5.0, 1.0, 3.0, 2.0, 0.5, 0.4, 0.6, 0.7])  # best at epoch 2, then 2 epochs without a better one
    test_losses = iter([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0])  # always improving: must not decide anything

    def evaluate_scripted(model, split, seed):
        return {**evaluate(model, split, seed), "loss": next(val_losses if len(split) == 100 else test_losses)}
    monkeypatch.setattr(vae.train.loop, "evaluate", evaluate_scripted)
    result = train(cfg)
    assert [r["epoch"] for r in result.rows] == [1, 2, 3, 4]
    assert [r["val_loss"] for r in result.rows] == [5.0, 1.0, 3.0, 2.0]
    assert result.best == {"loss": 1.0, "epoch": 2}
    out = capsys.readouterr().out
    assert "early stop after epoch 4: the validation loss has not improved for 2 epochs" in out
    assert any(line.startswith("epoch   2/8") and "val    1.000" in line for line in out.splitlines())
    run = result.run_dir
    assert load_checkpoint(run / "checkpoints" / "best.pt")[0]["epoch"] == 2
    assert load_checkpoint(run / "checkpoints" / "last.pt")[0]["epoch"] == 4
    assert rundir.read_metrics(run) == result.rows  # the val columns round-trip through metrics.csv
    assert (run / "images" / "recon_epoch004.png").is_file()  # the last epoch's pictures, as after train.epochs

    again = train(cfg, resume=run)  # an early-stopped run stays stopped
    assert "(epoch 4) stopped early: the validation loss has not improved" in capsys.readouterr().out
    assert len(again.rows) == 4
    longer = train(with_(cfg, train={"patience": 3}), resume=run)  # more patience trains on, to train.epochs
    assert [r["epoch"] for r in longer.rows] == list(range(1, 9)) and longer.best == {"loss": 0.4, "epoch": 6}


def test_validation_metrics_are_the_held_out_images_measured_like_the_test_set(tiny_cfg):
    result = train(with_(tiny_cfg, data={"val_size": 100, "binarize": "dynamic"}))
    _, val, test = load_data(with_(tiny_cfg, data={"val_size": 100, "binarize": "dynamic"}).data, torch.device("cpu"))
    for split, name in ((val, "val"), (test, "test")):
        nats = evaluate(result.model, split, tiny_cfg.train.seed)
        assert result.rows[-1][f"{name}_loss"] == pytest.approx(nats["loss"])
        assert result.rows[-1][f"{name}_kl"] == pytest.approx(nats["kl"])
