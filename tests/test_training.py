import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from vae import rundir
from vae.checkpoint import load_checkpoint
from vae.config import TrainConfig, from_dict, to_dict
from vae.data import load_data, load_mnist
from vae.errors import UserError
from vae.evaluation import evaluate
from vae.loss import vae_loss
from vae.model import VAE
from vae.resume import EpochProgress
from vae.step import train_step
from vae.training import learning_rate, train

TIMING = "seconds"


def with_(cfg, **sections):
    """cfg with some fields replaced, e.g. with_(cfg, train={"epochs": 4})."""
    return dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **values)
                                       for name, values in sections.items()})


def without_timing(rows):
    return [{k: v for k, v in r.items() if k != TIMING} for r in rows]


def assert_same_parameters(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


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


def test_training_lowers_the_loss_on_learnable_data(tiny_cfg):
    rows = train(with_(tiny_cfg, train={"epochs": 4})).rows
    assert rows[-1]["test_loss"] < rows[0]["test_loss"] - 20
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]


def test_a_training_step_changes_weights_and_evaluation_does_not(tiny_cfg):
    train_split, test_split = load_mnist(tiny_cfg.data.root, False, torch.device("cpu"))
    torch.manual_seed(0)
    model = VAE(tiny_cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(model, test_split, seed=0)
    assert_same_parameters(before, model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    progress = EpochProgress.begin(len(train_split), torch.Generator().manual_seed(0))
    train_step(model, opt, train_split.pixels(progress.remaining(64)[0]), model.noise(64)[None], progress, tiny_cfg)
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    progress.merge()
    assert progress.step == 1 and progress.seen == 64 and progress.means()["loss"] > 100


def test_grad_clip_bounds_the_gradient_norm(tiny_cfg):
    train_split, _ = load_mnist(tiny_cfg.data.root, False, torch.device("cpu"))
    x = train_split.pixels(torch.arange(64))

    def grad_norm(clip):
        torch.manual_seed(0)
        model = VAE(tiny_cfg.model)
        opt = torch.optim.Adam(model.parameters())
        eps = model.noise(64, torch.Generator().manual_seed(0))[None]
        train_step(model, opt, x, eps, EpochProgress(torch.arange(64)), with_(tiny_cfg, train={"grad_clip": clip}))
        return torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item()
    assert grad_norm(0.0) > 10 and grad_norm(0.5) == pytest.approx(0.5, rel=1e-4)


def test_evaluation_is_repeatable(tiny_cfg):
    _, test_split = load_mnist(tiny_cfg.data.root, False, torch.device("cpu"))
    model = VAE(tiny_cfg.model)
    assert evaluate(model, test_split, seed=4) == evaluate(model, test_split, seed=4)
    assert evaluate(model, test_split, seed=4) != evaluate(model, test_split, seed=5)


def test_same_seed_gives_the_same_run_and_another_seed_does_not(tiny_cfg, tmp_path):
    a = train(tiny_cfg)
    b = train(with_(tiny_cfg, output={"dir": str(tmp_path / "b")}))
    c = train(with_(tiny_cfg, output={"dir": str(tmp_path / "c")}, train={"seed": 4}))
    assert without_timing(a.rows) == without_timing(b.rows) != without_timing(c.rows)
    assert_same_parameters(a.model.state_dict(), b.model.state_dict())


def test_resume_is_bitwise_identical_to_uninterrupted_run(tiny_cfg, tmp_path):
    straight = train(with_(tiny_cfg, train={"epochs": 4}, output={"dir": str(tmp_path / "straight")}))
    halves = with_(tiny_cfg, train={"epochs": 2}, output={"dir": str(tmp_path / "halves")})
    train(halves)
    resumed = train(with_(halves, train={"epochs": 4}), resume=tmp_path / "halves")
    assert_same_parameters(straight.model.state_dict(), resumed.model.state_dict())
    assert without_timing(rundir.read_metrics(tmp_path / "halves")) == without_timing(straight.rows)
    a, _ = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b, _ = load_checkpoint(tmp_path / "halves" / "checkpoints" / "last.pt")
    assert_same_parameters(a["optimizer"]["state"][0], b["optimizer"]["state"][0])
    assert torch.equal(a["rng"]["generator"], b["rng"]["generator"])


def test_best_checkpoint_is_one_consistent_moment(tiny_cfg, tmp_path, monkeypatch):
    import vae.training
    scripted = iter([5.0, 1.0, 3.0])  # test losses per epoch: the best epoch (2) is not the last

    def evaluate_scripted(*args):
        return {**evaluate(*args), "loss": next(scripted)}
    monkeypatch.setattr(vae.training, "evaluate", evaluate_scripted)
    result = train(with_(tiny_cfg, train={"epochs": 3}))
    monkeypatch.undo()
    best, _ = load_checkpoint(result.run_dir / "checkpoints" / "best.pt")
    assert best["epoch"] == 2 and best["best"] == {"loss": 1.0, "epoch": 2}
    # The same weights, optimizer state and RNG as a run that stopped after epoch 2.
    two, _ = load_checkpoint(train(with_(tiny_cfg, output={"dir": str(tmp_path / "two")})).run_dir)
    assert_same_parameters(best["model"], two["model"])
    assert_same_parameters(best["optimizer"]["state"][0], two["optimizer"]["state"][0])
    assert torch.equal(best["rng"]["generator"], two["rng"]["generator"])


def test_resume_from_an_earlier_checkpoint_refuses_to_discard_later_epochs(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg)
    shutil.copy(run / "checkpoints" / "last.pt", run / "checkpoints" / "epoch2.pt")
    full = train(with_(tiny_cfg, train={"epochs": 4}), resume=run)
    before = (run / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(UserError, match="trained to epoch 4.*would discard.*--overwrite"):
        train(with_(tiny_cfg, train={"epochs": 4}), resume=run / "checkpoints" / "epoch2.pt")
    assert (run / "checkpoints" / "last.pt").read_bytes() == before
    again = train(with_(tiny_cfg, train={"epochs": 4}), resume=run / "checkpoints" / "epoch2.pt", overwrite=True)
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2, 3, 4]
    assert without_timing(again.rows) == without_timing(full.rows)
    assert (run / "checkpoints" / "last.pt").read_bytes() == before  # the same epochs, redone bit for bit


def test_resume_into_another_directory_forks_the_run(tiny_cfg, tmp_path):
    train(tiny_cfg)
    source = tmp_path / "run"
    source_files = {p.name: p.read_bytes() for p in (source / "checkpoints").iterdir()}
    source_rows = rundir.read_metrics(source)
    fork = train(with_(tiny_cfg, train={"epochs": 3}, output={"dir": str(tmp_path / "fork")}), resume=source)
    assert [r["epoch"] for r in rundir.read_metrics(tmp_path / "fork")] == [1, 2, 3]
    assert fork.rows[:2] == source_rows == rundir.read_metrics(source)
    assert {p.name: p.read_bytes() for p in (source / "checkpoints").iterdir()} == source_files
    assert load_checkpoint(tmp_path / "fork" / "checkpoints" / "best.pt")[0]["epoch"] in (2, 3)
    with pytest.raises(UserError, match="already holds a run"):  # a fork never lands on a run
        train(with_(tiny_cfg, train={"epochs": 3}, output={"dir": str(tmp_path / "fork")}), resume=source)


def test_a_loose_checkpoint_forks_into_output_dir(tiny_cfg, tmp_path):
    train(tiny_cfg)
    shutil.copy(tmp_path / "run" / "checkpoints" / "last.pt", tmp_path / "model.pt")
    result = train(with_(tiny_cfg, train={"epochs": 3}, output={"dir": str(tmp_path / "new")}),
                   resume=tmp_path / "model.pt")
    assert [r["epoch"] for r in result.rows] == [3]  # no history travels with a bare checkpoint
    assert load_checkpoint(tmp_path / "new" / "checkpoints" / "best.pt")[0]["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "new", "run"]


def test_a_best_checkpoint_newer_than_last_is_redone(tiny_cfg, tmp_path):
    """A kill after best.pt but before last.pt was written: the resumed epoch rewrites best.pt."""
    straight = train(with_(tiny_cfg, train={"epochs": 3}, output={"dir": str(tmp_path / "straight")}))
    train(tiny_cfg)
    run = tmp_path / "run"
    shutil.copy(straight.run_dir / "checkpoints" / "best.pt", run / "checkpoints" / "best.pt")  # epoch 3
    train(with_(tiny_cfg, train={"epochs": 3}), resume=run)
    redone, _ = load_checkpoint(run / "checkpoints" / "best.pt")
    expected, _ = load_checkpoint(straight.run_dir / "checkpoints" / "best.pt")
    assert redone["epoch"] == expected["epoch"] == 3
    assert_same_parameters(redone["model"], expected["model"])


def test_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tiny_cfg, monkeypatch):
    import vae.loss
    run = train(tiny_cfg).run_dir
    good = (run / "checkpoints" / "last.pt").read_bytes()
    calls = iter(range(1000))

    def poisoned(*args):  # the 4th step of the resumed epoch 3 gets a NaN KL
        terms = vae_loss(*args)
        return terms._replace(kl=terms.kl * float("nan")) if next(calls) == 3 else terms
    monkeypatch.setattr(vae.loss, "vae_loss", poisoned)  # the training objective's, not evaluation's
    with pytest.raises(UserError, match="diverged at epoch 3, step 4: KL not finite"):
        train(with_(tiny_cfg, train={"epochs": 3}), resume=run)
    assert (run / "checkpoints" / "last.pt").read_bytes() == good
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2]


def test_a_signal_mid_epoch_saves_and_the_resume_is_bitwise_exact(tiny_cfg, tmp_path, monkeypatch):
    import os
    import signal

    import vae.training
    from vae.errors import Interrupted
    straight = train(with_(tiny_cfg, train={"epochs": 3}, output={"dir": str(tmp_path / "straight")}))
    real, steps = vae.training.train_step, iter(range(1000))

    def ctrl_c_at_step_13(*args):  # epochs have 10 steps: this is step 3 of epoch 2
        real(*args)
        if next(steps) == 12:
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(vae.training, "train_step", ctrl_c_at_step_13)
    cfg = with_(tiny_cfg, train={"epochs": 3})
    with pytest.raises(Interrupted, match="stopped in epoch 2 after step 3; continue with") as e:
        train(cfg)
    assert e.value.signum == signal.SIGINT
    monkeypatch.undo()
    state, _ = load_checkpoint(tmp_path / "run")
    assert state["epoch"] == 1 and state["progress"]["step"] == 3
    resumed = train(cfg, resume=tmp_path / "run")
    assert_same_parameters(straight.model.state_dict(), resumed.model.state_dict())
    assert without_timing(rundir.read_metrics(tmp_path / "run")) == without_timing(straight.rows)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored


def test_a_crash_resumes_from_the_last_step_checkpoint_exactly(tiny_cfg, tmp_path, monkeypatch):
    import vae.training
    cfg = with_(tiny_cfg, train={"checkpoint_every_steps": 4})
    straight = train(with_(cfg, output={"dir": str(tmp_path / "straight")}))
    real, steps = vae.training.train_step, iter(range(1000))

    def crash_at_step_17(*args):  # epochs have 10 steps: epoch 2, after its step-4 checkpoint
        if next(steps) == 16:
            raise RuntimeError("power cut")
        real(*args)
    monkeypatch.setattr(vae.training, "train_step", crash_at_step_17)
    with pytest.raises(RuntimeError, match="power cut"):
        train(cfg)
    monkeypatch.undo()
    state, _ = load_checkpoint(tmp_path / "run")
    assert state["epoch"] == 1 and state["progress"]["step"] == 4
    resumed = train(cfg, resume=tmp_path / "run")
    assert_same_parameters(straight.model.state_dict(), resumed.model.state_dict())
    assert without_timing(resumed.rows) == without_timing(straight.rows)


def test_deterministic_mode_trains_identically(tiny_cfg, tmp_path):
    a = train(with_(tiny_cfg, train={"deterministic": True}))
    assert torch.are_deterministic_algorithms_enabled()
    b = train(with_(tiny_cfg, output={"dir": str(tmp_path / "b")}))
    assert not torch.are_deterministic_algorithms_enabled()
    assert without_timing(a.rows) == without_timing(b.rows)


def test_resume_truncates_rows_written_after_the_checkpoint(tiny_cfg, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg)
    rows = rundir.read_metrics(run)
    rundir.write_metrics(run, rows + [{**rows[-1], "epoch": 3}])  # as if killed after the row, before the save
    result = train(with_(tiny_cfg, train={"epochs": 3}), resume=run)
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2, 3]
    assert rundir.read_metrics(run)[2] == result.rows[2] != rows[-1] | {"epoch": 3}


def test_resume_refuses_another_architecture_or_learning_rate(tiny_cfg):
    train(tiny_cfg)
    for changed in ({"model": {"latent_dim": 8}}, {"train": {"lr": 0.1}}):
        with pytest.raises(UserError, match="trained with another config"):
            train(with_(tiny_cfg, **changed), resume=tiny_cfg.output.dir)


def test_resume_of_a_finished_run_trains_nothing(tiny_cfg, capsys):
    train(tiny_cfg)
    before = (tiny_cfg.output.dir + "/checkpoints/last.pt")
    stamp = open(before, "rb").read()
    result = train(tiny_cfg, resume=tiny_cfg.output.dir)
    assert "nothing to do" in capsys.readouterr().out
    assert len(result.rows) == 2 and open(before, "rb").read() == stamp


def test_a_new_run_never_clobbers_an_existing_one(tiny_cfg):
    first = train(tiny_cfg)
    stamp = (first.run_dir / "checkpoints" / "last.pt").read_bytes()
    with pytest.raises(UserError, match="already holds a run.*--resume.*--overwrite"):
        train(with_(tiny_cfg, train={"seed": 9}))
    assert (first.run_dir / "checkpoints" / "last.pt").read_bytes() == stamp
    replaced = train(with_(tiny_cfg, train={"seed": 9, "epochs": 1}), overwrite=True)
    assert [r["epoch"] for r in replaced.rows] == [1]
    assert not (first.run_dir / "images" / "recon_epoch002.png").exists()


def test_a_full_disk_or_a_file_in_the_way_fails_before_anything_is_written(tiny_cfg, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file, not a directory"):
        train(with_(tiny_cfg, output={"dir": str(tmp_path / "file" / "run")}))
    monkeypatch.setattr(rundir.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12, 2**20))
    with pytest.raises(UserError, match=r"only 1 MiB free on the disk of .*needs about \d+ MiB"):
        train(tiny_cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_missing_data_fails_before_anything_is_written(tiny_cfg, tmp_path):
    cfg = with_(tiny_cfg, data={"root": str(tmp_path / "empty")})
    with pytest.raises(UserError, match="MNIST files not found"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_config_yaml_records_overrides_for_a_later_resume(tiny_cfg):
    run = train(with_(tiny_cfg, model={"hidden_dims": (16, 8)})).run_dir
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["hidden_dims"] == [16, 8]
    assert to_dict(load_checkpoint(run)[1])["model"]["hidden_dims"] == [16, 8]


@pytest.mark.parametrize("option", [{"precision": "bf16"}, {"compile": True}])
def test_bf16_and_compiled_training_follow_the_fp32_eager_run(tiny_cfg, tmp_path, option):
    plain = train(with_(tiny_cfg, output={"dir": str(tmp_path / "plain")}))
    other = train(with_(tiny_cfg, train=option, output={"dir": str(tmp_path / "other")}))
    for a, b in zip(plain.rows, other.rows):
        # compiled kernels reorder float sums; bf16 rounds the products to 8 mantissa bits
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=1e-4 if "compile" in option else 2e-2)
    state, _ = load_checkpoint(other.run_dir / "checkpoints" / "last.pt")
    assert state["model"].keys() == plain.model.state_dict().keys()  # the plain model's weights, never a wrapper's
    assert all(v.dtype == torch.float32 for v in state["model"].values())


def test_learning_rate_schedules():
    def lrs(schedule, epochs):
        cfg = TrainConfig(lr=1e-2, epochs=epochs, lr_schedule=schedule, lr_decay_to=0.01)
        return [learning_rate(cfg, e) for e in range(1, epochs + 1)]
    assert lrs("constant", 3) == [1e-2] * 3
    assert lrs("exponential", 3) == pytest.approx([1e-2, 1e-3, 1e-4])
    assert lrs("cosine", 3) == pytest.approx([1e-2, 1e-2 * (0.01 + 0.99 * 0.5), 1e-4])
    burda = lrs("burda", 3300)
    assert burda[0] == 1e-2 and burda[1] == burda[3] == pytest.approx(1e-2 * 10 ** (-1 / 7)) != burda[4]
    assert burda[3279] == burda[3299] == pytest.approx(1e-3)  # the last stage (i = 7) is epochs 1094..3280
    assert burda[1092] != burda[1093] == pytest.approx(1e-3)


def test_dynamic_binarization_trains_on_fresh_draws_and_measures_one_fixed_test_set(tiny_cfg, tmp_path):
    cfg = with_(tiny_cfg, data={"binarize": "dynamic"})
    a = train(cfg)
    b = train(with_(cfg, output={"dir": str(tmp_path / "again")}))
    assert without_timing(a.rows) == without_timing(b.rows)  # the draws are seeded
    plain = train(with_(tiny_cfg, output={"dir": str(tmp_path / "plain")}))
    assert a.rows[0]["train_loss"] != plain.rows[0]["train_loss"]
    test = load_data(cfg.data, torch.device("cpu")).test
    assert evaluate(a.model, test, cfg.train.seed)["loss"] == pytest.approx(a.rows[-1]["test_loss"])


def test_the_schedule_sets_each_epochs_learning_rate(tiny_cfg):
    result = train(with_(tiny_cfg, train={"epochs": 3, "lr_schedule": "exponential", "lr_decay_to": 0.25}))
    state, _ = load_checkpoint(result.run_dir / "checkpoints" / "last.pt")
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(tiny_cfg.train.lr * 0.25)


@pytest.mark.parametrize("loss", [{"iwae_k": 5}, {"beta": 0.5, "kl_warmup_epochs": 1, "free_bits": 0.2}])
def test_objective_options_train_and_report_the_negative_elbo(tiny_cfg, tmp_path, loss):
    plain = train(with_(tiny_cfg, output={"dir": str(tmp_path / "plain")}))
    other = train(with_(tiny_cfg, loss=loss, output={"dir": str(tmp_path / "other")}))
    for a, b in zip(plain.rows, other.rows):
        # the columns are the plain negative ELBO's terms, not the objective (beta 0.5, free bits, IWAE)
        assert b["train_loss"] == pytest.approx(b["train_recon"] + b["train_kl"])
        assert b["test_loss"] == pytest.approx(b["test_recon"] + b["test_kl"])
        assert b["train_loss"] != a["train_loss"]
    assert other.rows[-1]["test_loss"] < other.rows[0]["test_loss"]


def test_a_validation_split_chooses_best_pt_and_stops_early(tiny_cfg, tmp_path, monkeypatch, capsys):
    import vae.training
    cfg = with_(tiny_cfg, data={"val_size": 100}, train={"epochs": 8, "patience": 2})
    val_losses = iter([5.0, 1.0, 3.0, 2.0, 0.5, 0.4, 0.6, 0.7])  # best at epoch 2, then 2 epochs without a better one
    test_losses = iter([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0])  # always improving: must not decide anything

    def evaluate_scripted(model, split, seed):
        return {**evaluate(model, split, seed), "loss": next(val_losses if len(split) == 100 else test_losses)}
    monkeypatch.setattr(vae.training, "evaluate", evaluate_scripted)
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
    assert "(epoch 4) has used up its patience" in capsys.readouterr().out and len(again.rows) == 4
    longer = train(with_(cfg, train={"patience": 3}), resume=run)  # more patience trains on, to train.epochs
    assert [r["epoch"] for r in longer.rows] == list(range(1, 9)) and longer.best == {"loss": 0.4, "epoch": 6}


def test_validation_metrics_are_the_held_out_images_measured_like_the_test_set(tiny_cfg):
    result = train(with_(tiny_cfg, data={"val_size": 100, "binarize": "dynamic"}))
    _, val, test = load_data(with_(tiny_cfg, data={"val_size": 100, "binarize": "dynamic"}).data, torch.device("cpu"))
    for split, name in ((val, "val"), (test, "test")):
        nats = evaluate(result.model, split, tiny_cfg.train.seed)
        assert result.rows[-1][f"{name}_loss"] == pytest.approx(nats["loss"])
        assert result.rows[-1][f"{name}_kl"] == pytest.approx(nats["kl"])


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
    from vae.loss import objective_nats
    from vae.model import build_model
    cfg = with_(tiny_cfg, model={"latent2_dim": 3, "hidden2_dims": (16,)}, loss={"free_bits": 50.0})
    model = build_model(cfg.model)
    x = torch.rand(8, 784)
    out = model(x, torch.randn(1, 8, model.noise_dim))
    objective, terms = objective_nats(out.logits, x, out.rate, cfg.loss, 1.0)
    # every one of the 4 + 3 dimensions is far under 50 nats, so each counts as 50
    torch.testing.assert_close(objective, terms.reconstruction.sum() + 8 * 7 * 50.0)


@pytest.mark.parametrize("data, loss", [({"binarize": "dynamic"}, {"iwae_k": 3}), ({}, {})])
def test_the_graphed_step_draws_what_the_eager_step_draws(tiny_cfg, data, loss):
    from vae.step import GraphedStep, draw_batch
    cfg = with_(tiny_cfg, data=data, loss=loss)
    split = load_data(cfg.data, torch.device("cpu")).train
    model = VAE(cfg.model)
    index = torch.tensor([5, 3, 9, 0] * 16)
    x, eps = draw_batch(split, index, torch.Generator().manual_seed(7), cfg, model.noise_dim)
    graphed = GraphedStep(model, None, split, cfg, model.noise_dim, torch.device("cpu"))  # buffers only
    graphed.draw(index, torch.Generator().manual_seed(7))
    gx, geps = graphed.batch()
    assert eps.shape == (64, cfg.loss.iwae_k, 4) and torch.equal(gx, x) and torch.equal(geps, eps)


def test_compile_without_a_cpp_compiler_is_one_clear_error(tiny_cfg, monkeypatch):
    import shutil
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match=r"^train.compile=true needs a C\+\+ compiler"):
        train(with_(tiny_cfg, train={"compile": True}))
    assert not Path(tiny_cfg.output.dir).exists()  # refused before anything was written
