"""Sweeps: a grid over seeds trains every point once as an ordinary run; bad sweeps are refused; a
failing trial is recorded; kills, two workers and Ctrl-C lose nothing and train nothing twice."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import optuna
import pytest
import torch
import yaml
from conftest import REPO, write_config

from vae.cli import INVOKED_AS
from vae.compare import figures
from vae.compare.compare import compare
from vae.config.load import from_dict, load_config, to_dict
from vae.errors import UserError
from vae.run import rundir
from vae.run.checkpoint import load_checkpoint
from vae.sweep.pool import run_workers
from vae.sweep.report import summary
from vae.sweep.spec import Sweep, load, parse_grid, parse_search
from vae.sweep.study import create, open_study
from vae.sweep.trial import suggest, train_trial
from vae.sweep.worker import resume

SWEEP = [sys.executable, str(REPO / "sweep.py")]


def make(tmp_path, mnist_root, grid, seeds=1, **train):
    cfg = load_config(write_config(tmp_path / "base.yaml", mnist_root, **train))
    spec = Sweep(config=to_dict(cfg), grid=parse_grid(grid), seeds=seeds, heartbeat=1)
    create(spec, tmp_path / "sweep")
    return spec, tmp_path / "sweep"


def trials(sweep_dir):
    study = open_study(load(sweep_dir), sweep_dir)
    return study.get_trials(deepcopy=False)


def final_weights(sweep_dir):
    return {p.name: load_checkpoint(p / "checkpoints" / "last.pt")[0]["model"]
            for p in sorted((sweep_dir / "runs").iterdir())}


def test_a_grid_over_seeds_trains_every_point_once_as_an_ordinary_run(tmp_path, mnist_root):
    spec, sweep_dir = make(tmp_path, mnist_root, ["loss.beta=0.5,2", "model.hidden_dims=[16],[8,8]"], seeds=2)
    assert spec.size() == 8
    run_workers(sweep_dir, 1)
    done = trials(sweep_dir)
    assert [t.state.name for t in done] == ["COMPLETE"] * 8
    points = sorted((t.params["loss.beta"], t.params["model.hidden_dims"], t.params["train.seed"]) for t in done)
    assert points == sorted((b, h, s) for b in ("0.5", "2") for h in ("[16]", "[8,8]") for s in ("0", "1"))
    runs = sorted((sweep_dir / "runs").iterdir())
    assert len(runs) == 8 and {sweep_dir / "runs" / t.user_attrs["run"] for t in done} == set(runs)
    for t in done:  # each trial is a run: its own config, metrics and checkpoints
        run = sweep_dir / "runs" / t.user_attrs["run"]
        cfg = from_dict(yaml.safe_load((run / "config.yaml").read_text()))
        assert (cfg.loss.beta, list(cfg.model.hidden_dims), cfg.train.seed) == \
            (float(t.params["loss.beta"]), yaml.safe_load(t.params["model.hidden_dims"]), int(t.params["train.seed"]))
        assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2]
        assert t.value == load_checkpoint(run / "checkpoints" / "best.pt")[0]["best"]["loss"]
    stored = json.loads((sweep_dir / "sweep.json").read_text())
    assert stored["grid"] == {"loss.beta": ["0.5", "2"], "model.hidden_dims": ["[16]", "[8,8]"]}
    assert stored["seeds"] == 2 and "created_at" in stored
    assert "8 of 8 trials complete" in summary(sweep_dir)


@pytest.mark.parametrize("grid, search, options, overrides, message", [
    (["loss.betta=1,2"], [], {}, [], r"unknown config key 'loss.betta' \(did you mean 'loss.beta'\?\)"),
    (["train.epochs=2,two"], [], {}, [], r"train.epochs must be int, got 'two'"),
    (["loss.beta="], [], {}, [], r"--grid loss.beta=: give one or more values"),
    ([], [], {}, [], r"an empty sweep: give --grid"),
    ([], ["train.lr=log(1e-4,1e-2)"], {"trials": 3}, [], r"a search is steered by the validation loss"),
    ([], ["train.lr=log(1e-2,1e-4)"], {"trials": 3}, ["data.val_size=100"], r"log takes two numbers low < high"),
    ([], ["train.lr=normal(0,1)"], {"trials": 3}, ["data.val_size=100"], r"write log\(low,high\), uniform"),
    (["loss.beta=1,2"], [], {"prune": "median"}, [], r"--prune stops trials of a search"),
    (["train.seed=1,2"], [], {"seeds": 2}, [], r"--seeds repeats each point over train.seed"),
    ([], ["loss.beta=log(0.5,2)"], {"trials": 3, "prune": "median", "objectives": ["rate", "distortion"]},
     ["data.val_size=100"], r"--prune cannot stop trials of a two-objective search: Optuna prunes one"),
    (["loss.beta=1,2"], [], {"objectives": ["rate", "distortion"]}, [], r"--objectives rate,distortion steers a"),
    ([], ["loss.beta=log(0.5,2)"], {"trials": 3, "objectives": ["rate"]}, ["data.val_size=100"],
     r"--objectives rate: give loss \(the validation -ELBO\) or rate,distortion"),
])
def test_a_bad_sweep_is_refused_before_anything_trains(tmp_path, mnist_root, grid, search, options, overrides,
                                                        message):
    base = load_config(write_config(tmp_path / "c.yaml", mnist_root), overrides)
    with pytest.raises(UserError, match=message):
        create(Sweep(config=to_dict(base), grid=parse_grid(grid),
                                 search=parse_search(search), **options), tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_a_bad_sweep_on_the_command_line_is_one_line_and_exit_2(tmp_path, mnist_root):
    config = write_config(tmp_path / "c.yaml", mnist_root)
    result = subprocess.run(SWEEP + ["--config", str(config), "--dir", str(tmp_path / "s"), "--grid", "loss.betta=1"],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (2, "error: unknown config key 'loss.betta' (did you mean "
                                                     "'loss.beta'?)\n")
    assert not (tmp_path / "s").exists()


def test_an_existing_sweep_directory_is_refused(tmp_path, mnist_root):
    make(tmp_path, mnist_root, ["loss.beta=1"])
    with pytest.raises(UserError, match="already holds a sweep: continue it with --resume"):
        make(tmp_path, mnist_root, ["loss.beta=2"])


def test_a_failing_trial_is_recorded_with_its_reason_and_the_sweep_goes_on(tmp_path, mnist_root):
    # 700 validation images leave none of the 640 to train on: a UserError inside that trial only
    _, sweep_dir = make(tmp_path, mnist_root, ["data.val_size=100,700"])
    run_workers(sweep_dir, 1)
    by_size = {t.params["data.val_size"]: t for t in trials(sweep_dir)}
    assert by_size["100"].state.name == "COMPLETE"
    assert by_size["700"].state.name == "FAIL"
    assert "data.val_size=700 leaves no training images" in by_size["700"].user_attrs["error"]
    assert "failed: data.val_size=700 leaves no training images" in summary(sweep_dir)


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_sweep(tmp_path, mnist_root):
    grid = ["--grid", "loss.beta=0.5,1", "--seeds", "2", "--heartbeat", "1"]
    config = write_config(tmp_path / "c.yaml", mnist_root, epochs=3, checkpoint_every_steps=3)
    straight = tmp_path / "straight"  # in process: what the killed sweep must end as
    create(Sweep(config=to_dict(load_config(config)), grid=parse_grid(["loss.beta=0.5,1"]), seeds=2, heartbeat=1),
           straight)
    run_workers(straight, 1)
    killed = tmp_path / "killed"
    rng = random.Random(int(os.environ.get("VAE_FAULT_SEED", "0")))
    def command():  # a sweep killed before it wrote sweep.json is started again
        started = (killed / "sweep.json").exists()
        return ["--resume", str(killed)] if started else ["--config", str(config), "--dir", str(killed), *grid]
    for _ in range(3):
        proc = subprocess.Popen(SWEEP + command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 5.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    subprocess.run(SWEEP + command(), check=True, capture_output=True, timeout=300)
    done = [t for t in trials(killed) if t.state.name == "COMPLETE"]
    assert sorted(t.user_attrs["run"] for t in done) == \
        sorted(p.name for p in (killed / "runs").iterdir())  # each point completed once, none lost
    for name, weights in final_weights(straight).items():
        other = final_weights(killed)[name]
        assert all(torch.equal(weights[k], other[k]) for k in weights), name
        assert [r["epoch"] for r in rundir.read_metrics(killed / "runs" / name)] == [1, 2, 3]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_grid_point_given_again_while_another_trial_has_it_is_not_trained(tmp_path, mnist_root):
    # Both points running, GridSampler gives a third trial one of them again: that trial makes no run.
    spec, sweep_dir = make(tmp_path, mnist_root, ["loss.beta=0.5,2"])
    study = open_study(spec, sweep_dir)
    first, second = study.ask(), study.ask()
    values = [suggest(spec, first), suggest(spec, second)]
    assert sorted(v["loss.beta"] for v in values) == ["0.5", "2"]
    third = study.ask()
    with pytest.raises(UserError, match=r"not trained: trial [01] has its grid point"):
        train_trial(spec, sweep_dir, third)
    assert third.params in values and not any((sweep_dir / "runs").iterdir())
    study.tell(third, state=optuna.trial.TrialState.FAIL)
    owner = first if third.params == values[0] else second
    assert f"trial 2 was not trained: trial {owner.number} has its grid point" in summary(sweep_dir)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_failed_by_a_worker_killed_before_it_queued_the_copy_is_trained_on_resume(tmp_path, mnist_root):
    # A worker failed a trial (its own, or a stale one) and was killed before queuing the copy that continues it.
    spec, sweep_dir = make(tmp_path, mnist_root, ["loss.beta=0.5,2"])
    study = open_study(spec, sweep_dir)
    orphan = study.ask()
    point = suggest(spec, orphan)
    study.tell(orphan, state=optuna.trial.TrialState.FAIL)
    run_workers(sweep_dir, 1)
    done = [t for t in trials(sweep_dir) if t.state.name == "COMPLETE"]
    assert sorted(t.params["loss.beta"] for t in done) == ["0.5", "2"]  # each point trained once, the orphan's too
    assert point["loss.beta"] in [t.params["loss.beta"] for t in done if t.system_attrs.get("failed_trial") == 0]


@pytest.mark.slow
def test_two_workers_train_every_grid_point_exactly_once(tmp_path, mnist_root):
    config = write_config(tmp_path / "c.yaml", mnist_root)
    result = subprocess.run(SWEEP + ["--config", str(config), "--dir", str(tmp_path / "s"), "--workers", "2",
                                     "--grid", "loss.beta=0.25,0.5,1,2,4"], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    done = [t for t in trials(tmp_path / "s") if t.state.name == "COMPLETE"]
    assert sorted(t.params["loss.beta"] for t in done) == ["0.25", "0.5", "1", "2", "4"]
    refused = [t for t in trials(tmp_path / "s") if t.state.name != "COMPLETE"]  # GridSampler's repeats, if any
    assert all(t.state.name == "FAIL" and "duplicate_of" in t.user_attrs for t in refused)
    assert len(list((tmp_path / "s" / "runs").iterdir())) == 5
    assert len({t.user_attrs["pid"] for t in done}) == 2  # both workers took trials
    for run in (tmp_path / "s" / "runs").iterdir():
        assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2]
        assert json.loads((run / "run.json").read_text())["previous"] == []  # started once


@pytest.mark.slow
def test_ctrl_c_stops_the_workers_saves_and_says_how_to_resume(tmp_path, mnist_root):
    config = write_config(tmp_path / "c.yaml", mnist_root, epochs=12)
    proc = subprocess.Popen(SWEEP + ["--config", str(config), "--dir", str(tmp_path / "s"), "--workers", "2",
                                     "--grid", "loss.beta=0.5,1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.time() + 120
    while not list((tmp_path / "s" / "runs").glob("*/checkpoints/last.pt")) and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"continue with: python sweep.py --resume {tmp_path / 's'}" in err
    states = [t.state.name for t in trials(tmp_path / "s")]
    assert "RUNNING" not in states and "WAITING" in states  # the stopped trials are queued again
    run_workers(tmp_path / "s", 1)  # the resume, in process
    for run in (tmp_path / "s" / "runs").iterdir():
        assert [r["epoch"] for r in rundir.read_metrics(run)] == list(range(1, 13))


def test_a_search_draws_from_its_space_chooses_on_validation_and_prunes(tmp_path, mnist_root):
    cfg = load_config(write_config(tmp_path / "base.yaml", mnist_root, epochs=3), ["data.val_size=100"])
    spec = Sweep(config=to_dict(cfg), search=parse_search(["train.lr=log(1e-3,1e-2)",
                                                                       "model.latent_dim=int(2,6)"]),
                       trials=4, prune="median", heartbeat=1)
    create(spec, tmp_path / "s")
    run_workers(tmp_path / "s", 1)
    done = trials(tmp_path / "s")
    assert len(done) == 4 and {t.state.name for t in done} <= {"COMPLETE", "PRUNED"}
    for t in done:
        run = tmp_path / "s" / "runs" / t.user_attrs["run"]
        assert run.name == f"trial-{t.number:04d}"
        assert 1e-3 <= t.params["train.lr"] <= 1e-2 and 2 <= t.params["model.latent_dim"] <= 6
        cfg = from_dict(yaml.safe_load((run / "config.yaml").read_text()))
        assert (cfg.train.lr, cfg.model.latent_dim) == (t.params["train.lr"], t.params["model.latent_dim"])
        rows = rundir.read_metrics(run)
        # the pruner saw each epoch's validation loss; a complete trial's value is its best one
        assert t.intermediate_values == {r["epoch"]: r["val_loss"] for r in rows}
        if t.state.name == "COMPLETE":
            assert t.value == min(r["val_loss"] for r in rows) and len(rows) == 3
        else:
            assert len(rows) < 3
    # the comparison of a search chooses on validation and shows Optuna's history of it
    result = compare([tmp_path / "s"], tmp_path / "s", ["eval.iwae_samples=8"])
    assert result["chosen"]["on"] == "validation"
    best = result["groups"][result["chosen"]["group"]]
    assert best["best_val"]["mean"] == min(g["best_val"]["mean"] for g in result["groups"])
    assert (tmp_path / "s" / "search_history.png").is_file() and (tmp_path / "s" / "search_importance.png").is_file()


def test_a_two_objective_search_draws_the_non_dominated_trials_as_its_pareto_front(tmp_path, mnist_root,
                                                                                  monkeypatch):
    cfg = load_config(write_config(tmp_path / "base.yaml", mnist_root), ["data.val_size=100"])
    space = parse_search(["loss.beta=log(0.05,20)", "train.lr=log(1e-4,3e-2)"])
    spec = Sweep(config=to_dict(cfg), search=space, trials=6, objectives=["rate", "distortion"], heartbeat=1)
    create(spec, tmp_path / "s")
    run_workers(tmp_path / "s", 1)
    done = trials(tmp_path / "s")
    assert [t.state.name for t in done] == ["COMPLETE"] * 6
    assert isinstance(open_study(spec, tmp_path / "s").sampler, optuna.samplers.NSGAIISampler)
    points = {}
    for t in done:  # each trial's objectives: its best epoch's validation rate and distortion
        run = tmp_path / "s" / "runs" / t.user_attrs["run"]
        rows = rundir.read_metrics(run)
        best = min(rows, key=lambda r: r["val_loss"])
        assert t.values == [best["val_kl"], best["val_recon"]]
        assert t.intermediate_values == {}  # nothing reported: Optuna prunes one objective only
        points[str(run)] = t.values
    # the non-dominated set by brute force: no other trial at most as large in both and smaller in one
    front = {run for run, (r, d) in points.items()
             if not any(r2 <= r and d2 <= d and (r2, d2) != (r, d) for r2, d2 in points.values())}
    assert 1 <= len(front) < len(points)  # betas from 0.05 to 20 trade rate for distortion, but not all of them
    drawn = {}
    real = figures.plot_rate_distortion
    monkeypatch.setattr(figures, "plot_rate_distortion",
                        lambda *a: drawn.update(front=a[-1]) or real(*a))
    result = compare([tmp_path / "s"], tmp_path / "s", ["eval.iwae_samples=4"])
    assert {result["groups"][i]["runs"][0] for i in drawn["front"]} == front
    listed = summary(tmp_path / "s").split("the Pareto front on validation")[1]
    assert {line.split(": rate")[0].strip() for line in listed.splitlines()[1:] if ": rate" in line} == front
    assert (tmp_path / "s" / "search_history.png").is_file()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs CPU affinity and two usable cores")
def test_a_worker_pinned_to_one_core_gets_one_thread():
    code = ("import os; from vae.sweep.pool import threads_per_worker; "
            "print(threads_per_worker(1)); os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "print(threads_per_worker(1))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split() == [str(len(os.sched_getaffinity(0))), "1"]  # all usable cores, then the one left


@pytest.mark.parametrize("argv0, given, sweep, evaluate", [
    ("/home/me/.venv/bin/vae-sweep", "", "vae-sweep", "vae-evaluate"),
    ("python -m vae sweep", "", "python -m vae sweep", "python -m vae evaluate"),
    ("/home/me/vae/sweep.py", "", "python sweep.py", "python evaluate.py"),
    ("python -m vae sweep", "script", "vae-sweep", "vae-evaluate"),  # a worker, started by vae-sweep
])
def test_the_hints_name_the_commands_as_the_user_ran_them(tmp_path, mnist_root, monkeypatch, argv0, given, sweep,
                                                           evaluate):
    monkeypatch.setattr(sys, "argv", [argv0])
    monkeypatch.setenv(INVOKED_AS, given)
    _, sweep_dir = make(tmp_path, mnist_root, ["loss.beta=1"])
    assert resume(sweep_dir) == f"{sweep} --resume {sweep_dir}"
    assert summary(sweep_dir).splitlines()[-1] == f"compare the runs: {evaluate} --compare {sweep_dir}"


def test_the_workers_speak_as_the_command_that_started_them(tmp_path, mnist_root, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/home/me/.venv/bin/vae-sweep"])
    monkeypatch.delenv(INVOKED_AS, raising=False)
    _, sweep_dir = make(tmp_path, mnist_root, ["loss.beta=1"])
    worker = tmp_path / "worker.py"  # run as `python worker.py --worker ...`: on its own, it would say sweep.py
    worker.write_text("import os\nfrom pathlib import Path\nfrom vae.cli import invoked_as\n"
                      f"Path({str(tmp_path)!r}, str(os.getpid())).write_text(invoked_as('sweep'))\n")
    run_workers(sweep_dir, 2, (str(worker),))
    said = [p.read_text() for p in tmp_path.iterdir() if p.name.isdigit()]
    assert said == ["vae-sweep", "vae-sweep"]
