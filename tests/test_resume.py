"""Resume: bitwise continuation after a stop, a signal or a crash; forks; what resume refuses."""
import shutil

import pytest
import torch
from conftest import assert_same_parameters, on_each_step, with_, without_timing

from vae.config.load import from_dict
from vae.config.schema import Config
from vae.errors import UserError
from vae.run import rundir
from vae.run.checkpoint import load_checkpoint
from vae.run.resume import check_same_run
from vae.train.loop import train


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


def test_a_signal_mid_epoch_saves_and_the_resume_is_bitwise_exact(tiny_cfg, tmp_path, monkeypatch):
    import os
    import signal

    from vae.errors import Interrupted
    before = signal.getsignal(signal.SIGINT)  # not always Python's default: a background job starts ignoring it
    straight = train(with_(tiny_cfg, train={"epochs": 3}, output={"dir": str(tmp_path / "straight")}))
    steps = iter(range(1000))

    def ctrl_c_at_step_13(step, *args):  # epochs have 10 steps: this is step 3 of epoch 2
        step(*args)
        if next(steps) == 12:
            os.kill(os.getpid(), signal.SIGINT)
    on_each_step(monkeypatch, ctrl_c_at_step_13)
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
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


@pytest.mark.parametrize("ema_decay", [0.0, 0.95])
def test_a_crash_resumes_from_the_last_step_checkpoint_exactly(tiny_cfg, tmp_path, monkeypatch, ema_decay):
    cfg = with_(tiny_cfg, train={"checkpoint_every_steps": 4, "ema_decay": ema_decay})
    straight = train(with_(cfg, output={"dir": str(tmp_path / "straight")}))
    steps = iter(range(1000))

    def crash_at_step_17(step, *args):  # epochs have 10 steps: epoch 2, after its step-4 checkpoint
        if next(steps) == 16:
            raise RuntimeError("power cut")
        step(*args)
    on_each_step(monkeypatch, crash_at_step_17)
    with pytest.raises(RuntimeError, match="power cut"):
        train(cfg)
    monkeypatch.undo()
    state, _ = load_checkpoint(tmp_path / "run")
    assert state["epoch"] == 1 and state["progress"]["step"] == 4
    resumed = train(cfg, resume=tmp_path / "run")
    assert_same_parameters(straight.model.state_dict(), resumed.model.state_dict())
    assert without_timing(resumed.rows) == without_timing(straight.rows)  # the average's numbers, when kept
    if ema_decay:  # the average went on from the step-4 checkpoint of epoch 2, as if nothing had happened
        a = load_checkpoint(tmp_path / "straight")[0]["average"]
        b = load_checkpoint(tmp_path / "run")[0]["average"]
        assert a["updates"] == b["updates"] == 20
        assert_same_parameters(a["model"], b["model"])


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


def test_same_run_allows_epochs_output_and_viz_but_not_architecture():
    stored = Config()
    check_same_run(stored, from_dict({"train": {"epochs": 99}, "output": {"dir": "x"}, "viz": {"digit": 7}}))
    with pytest.raises(UserError, match=r"model.latent_dim \(checkpoint: 20, given: 8\)"):
        check_same_run(stored, from_dict({"model": {"latent_dim": 8}}))
    with pytest.raises(UserError, match="train.lr"):
        check_same_run(stored, from_dict({"train": {"lr": 0.5}}))
