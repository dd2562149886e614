"""Sweeps, comparisons and run directories under hostile and careless use: passwords never shown or
stored, sweeps that cannot merge, workers that end with their sweep.py, comparisons that are never stale,
links never followed, memory shared by workers, the machine's failures retried, trials named, and bounds."""
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, with_, write_config
from matplotlib.image import imread

import vae.run.rundir
import vae.train.memory
from vae.compare.compare import compare
from vae.config.load import load_config, to_dict
from vae.errors import Interrupted, MachineError, UserError
from vae.evaluate.plots import plot_rate_split
from vae.files import locked
from vae.run import rundir
from vae.run.checkpoint import load_checkpoint
from vae.sweep.pool import run_workers
from vae.sweep.report import summary
from vae.sweep.spec import MAX_NAME_BYTES, Sweep, load, parse_grid
from vae.sweep.stop import WorkerStop
from vae.sweep.study import create, open_study, plain_study
from vae.sweep.worker import requeue
from vae.train.loop import train
from vae.train.plan import check_machine

SWEEP = [sys.executable, str(REPO / "sweep.py")]


def sweep_of(tmp_path, mnist_root, grid, directory=None, **spec):
    base = load_config(write_config(tmp_path / "base.yaml", mnist_root))
    sweep = Sweep(config=to_dict(base), grid=parse_grid(grid), heartbeat=1, **spec)
    directory = directory or tmp_path / "s"
    create(sweep, directory)
    return directory


def one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
    return result.stderr


# 1. A database password is never shown or stored.

@pytest.mark.parametrize("url, password", [
    ("postgresql://vae:s3cret-pw@127.0.0.1:1/nothing", "s3cret-pw"),
    ("postgresql://vae:s3cr/et@127.0.0.1:1/nothing", "s3cr/et"),  # SQLAlchemy takes a / there as the password's
    ("postgresql://vae@127.0.0.1:1/nothing?password=s3cret-q", "s3cret-q"),
])
def test_an_unreachable_database_is_one_line_that_never_shows_its_password(tmp_path, mnist_root, url, password):
    pytest.importorskip("psycopg")
    config = write_config(tmp_path / "c.yaml", mnist_root)
    result = subprocess.run(SWEEP + ["--config", str(config), "--grid", "loss.beta=1", "--dir", str(tmp_path / "s"),
                                     "--storage", url], capture_output=True, text=True, timeout=60)
    err = one_error_line(result)
    assert err.startswith("error: cannot open the sweep's storage postgresql://vae@127.0.0.1:1/nothing: ")
    assert password not in result.stdout + result.stderr
    assert not (tmp_path / "s").exists()


# 2. Two different sweeps never merge.

def test_another_sweep_cannot_join_a_study_but_the_same_sweep_on_another_machine_can(tmp_path, mnist_root):
    shared = f"sqlite:///{tmp_path / 'shared.db'}"
    sweep_of(tmp_path, mnist_root, ["loss.beta=0.5,1"], tmp_path / "a", storage=shared)
    sweep_of(tmp_path, mnist_root, ["loss.beta=0.5,1"], tmp_path / "b", storage=shared)  # a second machine
    with pytest.raises(UserError, match="the study 'sweep' in sqlite:///.*shared.db belongs to another sweep .* "
                                        "--study NAME"):
        sweep_of(tmp_path, mnist_root, ["loss.beta=2,4"], tmp_path / "c", storage=shared)
    assert not (tmp_path / "c" / "sweep.json").exists()  # refused before it claimed the directory
    sweep_of(tmp_path, mnist_root, ["loss.beta=2,4"], tmp_path / "c", storage=shared, study="other")


def test_of_sweeps_started_at_once_into_one_directory_one_claims_it(tmp_path, mnist_root):
    base = to_dict(load_config(write_config(tmp_path / "base.yaml", mnist_root)))
    start, outcomes = threading.Barrier(6), []

    def start_one(beta):
        start.wait()
        try:
            create(Sweep(config=base, grid={"loss.beta": [str(beta)]}), tmp_path / "s")
            outcomes.append(beta)
        except UserError as e:
            outcomes.append(str(e))
    threads = [threading.Thread(target=start_one, args=(beta,)) for beta in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if isinstance(o, int)]
    assert len(winners) == 1, outcomes
    assert all("already holds a sweep" in o for o in outcomes if isinstance(o, str))
    assert load(tmp_path / "s").grid == {"loss.beta": [str(winners[0])]}


# 3. Workers end with their sweep.py; one sweep.py at a time; exit statuses true.

def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has ended


@pytest.mark.slow
def test_workers_stop_when_their_sweep_py_is_killed_and_a_second_one_is_refused_while_it_runs(tmp_path, mnist_root):
    # Trials far longer than the test's few seconds: a trial that ends before the kill is not the case tested
    config = write_config(tmp_path / "c.yaml", mnist_root, epochs=300)
    sweep_dir = tmp_path / "s"
    parent = subprocess.Popen(SWEEP + ["--config", str(config), "--dir", str(sweep_dir), "--workers", "2",
                                       "--grid", "loss.beta=0.5,1"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while len(list(sweep_dir.glob("runs/*/checkpoints/last.pt"))) < 2 and time.time() < deadline:
        time.sleep(0.2)
    second = subprocess.run(SWEEP + ["--resume", str(sweep_dir)], capture_output=True, text=True, timeout=60)
    assert "is being run by another sweep on this machine" in one_error_line(second)
    workers = {t.user_attrs["pid"] for t in plain_study(load(sweep_dir), sweep_dir).get_trials()
               if t.state.name == "RUNNING"}
    assert len(workers) == 2
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 60
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in workers)  # each got SIGTERM, saved its trial and stopped
    states = [t.state.name for t in plain_study(load(sweep_dir), sweep_dir).get_trials()]
    assert "RUNNING" not in states and states.count("WAITING") == 2  # saved and queued again, for --resume
    # inside their 300 epochs (how far they got depends on the machine's load, not on the stop)
    assert all(load_checkpoint(run)[0]["epoch"] < 300 for run in (sweep_dir / "runs").iterdir())


def test_a_worker_killed_by_a_signal_is_reported_as_killed_not_as_status_0(tmp_path, mnist_root):
    sweep_dir = sweep_of(tmp_path, mnist_root, ["loss.beta=1"])
    suicide = tmp_path / "worker.py"
    suicide.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    with pytest.raises(UserError, match=r"^a sweep worker was killed by SIGKILL; continue with: python sweep.py "
                                        r"--resume"):
        run_workers(sweep_dir, 2, (str(suicide),))


# A sweep worker (`sweep.py --worker`) whose training sends it SIGTERM at the moment named by its first argument.
SIGTERM_AT = '''import os, signal, sys
import vae.train.loop
from vae.cli import run
from vae.commands.sweep import main

real, moment = vae.train.loop.train, sys.argv.pop(1)


def train(*args, after_epoch, **kwargs):
    def report(row, last):
        after_epoch(row, last)
        if last and moment == "in the last epoch":  # training's own handler takes it, and the run is complete
            os.kill(os.getpid(), signal.SIGTERM)
    if moment == "before training":  # the trial claimed, its run not yet started
        os.kill(os.getpid(), signal.SIGTERM)
    result = real(*args, after_epoch=report, **kwargs)
    if moment == "after training":  # before the trial is reported, outside training's handler
        os.kill(os.getpid(), signal.SIGTERM)
    return result


vae.train.loop.train = train
run(main)
'''


@pytest.mark.parametrize("moment, states", [("before training", ["FAIL", "WAITING"]),
                                            ("after training", ["FAIL", "WAITING"]),
                                            ("in the last epoch", ["COMPLETE"])])
def test_a_sigterm_outside_training_saves_the_trial_and_stops_the_worker(tmp_path, mnist_root, moment, states):
    sweep_dir = sweep_of(tmp_path, mnist_root, ["loss.beta=0.5,1"])
    worker = tmp_path / "worker.py"
    worker.write_text(SIGTERM_AT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, str(worker), moment, "--worker", str(sweep_dir)], capture_output=True,
                            text=True, timeout=300, env=env)
    assert result.returncode == 128 + signal.SIGTERM, result.stderr  # not killed by the default handler
    assert f"continue with: python sweep.py --resume {sweep_dir}" in result.stderr.splitlines()[-1]
    trials = plain_study(load(sweep_dir), sweep_dir).get_trials()
    assert [t.state.name for t in trials] == states  # saved (or complete), and the second point never started
    run_workers(sweep_dir, 1)  # the resume trains what is left, each grid point once
    for run in (sweep_dir / "runs").iterdir():
        assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2]
    assert len(list((sweep_dir / "runs").iterdir())) == 2


def test_a_signal_in_a_requeue_waits_for_its_end_and_then_stops_the_worker():
    """A trial failed and not yet queued again would be lost: a signal there stops the worker only after."""
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)  # a background job's ignore SIGINT
    steps = []
    with WorkerStop() as stop:
        with pytest.raises(Interrupted) as stopped:
            with stop.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler has run by now
                steps.append("failed")
                steps.append("queued again")
        assert steps == ["failed", "queued again"] and stopped.value.signum == signal.SIGTERM
        with stop.deferred(then_stop=False):  # stopping already: a second signal neither cuts nor raises
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            steps.append("requeued on the way out")
        assert steps[-1] == "requeued on the way out" and stop.received() is None  # taken by the block
        with pytest.raises(Interrupted):  # outside a deferred block, at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_a_held_directory_whose_name_has_braces_is_named_in_one_line(tmp_path):
    folder = tmp_path / "run_{x}"
    with locked(folder, f"{folder} is being written by another process{{pid}}"):
        with pytest.raises(UserError, match=rf"run_{{x}} is being written by another process \(pid {os.getpid()}\)"):
            with locked(folder, f"{folder} is being written by another process{{pid}}"):
                pass


# 4. A comparison never shows stale numbers, and every override is applied or refused.

def test_a_comparison_re_evaluates_a_run_trained_further_and_applies_or_refuses_every_override(tiny_cfg, tmp_path):
    run = train(tiny_cfg).run_dir
    assert compare([run], tmp_path / "c", ["eval.iwae_samples=4"])["runs"][0]["epochs"] == 2
    train(with_(tiny_cfg, train={"epochs": 3}), resume=run)
    again = compare([run], tmp_path / "c", ["eval.iwae_samples=4"])
    assert again["runs"][0]["epochs"] == 3  # not the cached evaluation of epoch 2
    assert json.loads((run / "eval" / "metrics.json").read_text())["epoch"] == 3
    with pytest.raises(UserError, match="data.binarize"):
        compare([run], tmp_path / "c", ["eval.iwae_samples=4", "data.binarize=static"])
    compare([run], tmp_path / "c", ["eval.iwae_samples=4", "viz.digit=3"])  # a setting: evaluated again with it
    assert (run / "eval" / "digit3.png").is_file()


# 5. Links in a run directory are never followed.

@pytest.mark.parametrize("name", [".lock", "run.json"])
def test_a_link_planted_in_a_run_directory_is_refused_and_its_target_untouched(tiny_cfg, tmp_path, name):
    outside = tmp_path / "precious.json"
    outside.write_text('{"secret": "do not copy me"}')
    run = Path(tiny_cfg.output.dir)
    run.mkdir()
    (run / name).symlink_to(outside)
    with pytest.raises(UserError, match=rf"{name} is a symbolic link"):
        train(tiny_cfg)
    assert outside.read_text() == '{"secret": "do not copy me"}'
    assert not (run / "checkpoints").exists()


# 6. The memory check knows each worker's share.

def test_the_memory_check_counts_each_workers_share_of_the_free_memory(tiny_cfg, monkeypatch):
    images = 640 + 200  # the synthetic MNIST's
    needed = sum(vae.train.memory.estimate_bytes(tiny_cfg, (1, 28, 28), images).values())
    monkeypatch.setattr(vae.train.memory, "available_bytes", lambda device: int(1.5 * needed))
    check_machine(tiny_cfg, Path(tiny_cfg.output.dir), torch.device("cpu"), (1, 28, 28), images)  # alone, it fits
    with pytest.raises(UserError, match=r"is available \(its share of 2 workers\).*or run fewer --workers"):
        check_machine(tiny_cfg, Path(tiny_cfg.output.dir), torch.device("cpu"), (1, 28, 28), images, memory_share=2)


# 7. A failure of the machine is queued again, and a comparison marks a run that did not finish.

def test_a_trial_the_machine_stopped_is_queued_again_with_its_reason_and_marked_unfinished(tmp_path, mnist_root,
                                                                                          monkeypatch):
    sweep_dir = sweep_of(tmp_path, mnist_root, ["loss.beta=0.5,1"])
    real = rundir.write_metrics

    def full_disk_at_epoch_2(run_dir, rows):
        if len(rows) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(run_dir, rows)
    monkeypatch.setattr(vae.run.rundir, "write_metrics", full_disk_at_epoch_2)
    with pytest.raises(UserError, match=r"a trial stopped on OSError: \[Errno 28\] No space left on device; it is "
                                        r"queued again: free the cause, then continue with: python sweep.py"):
        run_workers(sweep_dir, 1)
    trials = open_study(load(sweep_dir), sweep_dir).get_trials()
    failed, = [t for t in trials if t.state.name == "FAIL"]
    queued, = [t for t in trials if t.state.name == "WAITING"]
    assert "No space left on device" in failed.user_attrs["requeued_because"] and queued.params == failed.params
    assert "stopped by the machine and queued again" in summary(sweep_dir)
    result = compare([sweep_dir], tmp_path / "c", ["eval.iwae_samples=4"])
    assert [r["finished"] for r in result["runs"]] == [False] and result["groups"][0]["unfinished"] == 1
    monkeypatch.undo()
    run_workers(sweep_dir, 1)
    for run in (sweep_dir / "runs").iterdir():
        assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2]
    assert all(r["finished"] for r in compare([sweep_dir], tmp_path / "c", ["eval.iwae_samples=4"])["runs"])


def test_a_check_that_finds_the_disk_full_queues_the_trial_again(tmp_path, mnist_root, monkeypatch):
    sweep_dir = sweep_of(tmp_path, mnist_root, ["loss.beta=1"])

    def full(run_dir, needed):
        raise MachineError(f"only 0 MiB free on the disk of {run_dir}")
    monkeypatch.setattr(vae.run.rundir, "check_space", full)
    with pytest.raises(UserError, match=r"a trial stopped on only 0 MiB free on the disk of .*; it is queued again"):
        run_workers(sweep_dir, 1)
    states = sorted(t.state.name for t in open_study(load(sweep_dir), sweep_dir).get_trials())
    assert states == ["FAIL", "WAITING"]


# 8. A trial's run is named, and found under the sweep directory of the process that runs it.

def test_a_retried_trial_continues_in_the_sweep_directory_that_runs_it_wherever_it_was_started(tmp_path, mnist_root,
                                                                                               monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    sweep_of(tmp_path, mnist_root, ["loss.beta=1"], Path("s"))  # a relative --dir
    run_workers(Path("s"), 1)
    study = plain_study(load(Path("s")), Path("s"))
    requeue(study, study.get_trials()[0])  # as a worker that died would be retried
    monkeypatch.chdir(tmp_path / "b")
    run_workers(tmp_path / "a" / "s", 1)
    assert not (tmp_path / "b" / "s").exists()
    run, = (tmp_path / "a" / "s" / "runs").iterdir()
    assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2]


def test_a_run_name_from_the_database_that_leaves_the_sweep_directory_is_refused(tmp_path, mnist_root):
    sweep_dir = sweep_of(tmp_path, mnist_root, ["loss.beta=1"])
    study = plain_study(load(sweep_dir), sweep_dir)
    study.enqueue_trial({"loss.beta": "1"}, user_attrs={"run": "../../escaped"})
    run_workers(sweep_dir, 1)
    assert "'../../escaped', which is not a run name of a sweep" in summary(sweep_dir)
    assert not (tmp_path / "escaped").exists()


# 9. Sizes have bounds, and broken files are one line.

def test_a_huge_grid_or_seed_count_is_refused_in_one_line_at_once(tmp_path, mnist_root):
    config = write_config(tmp_path / "c.yaml", mnist_root)
    values = ",".join(str(i) for i in range(10_000))
    for args in (["--grid", f"train.seed={values}", "--grid", f"data.seed={values}"],
                 ["--grid", "loss.beta=1", "--seeds", "100000000"]):
        result = subprocess.run(SWEEP + ["--config", str(config), "--dir", str(tmp_path / "s"), *args],
                                capture_output=True, text=True, timeout=60)
        assert "a sweep runs 1 to 10,000 trials" in one_error_line(result)
    assert not (tmp_path / "s").exists()


def test_a_grid_point_with_a_long_value_gets_a_run_name_the_file_system_takes(tmp_path, mnist_root):
    long_root = str(mnist_root) + "/." * 150  # the same folder, spelled long
    sweep_dir = sweep_of(tmp_path, mnist_root, [f"data.root={mnist_root},{long_root}"])
    run_workers(sweep_dir, 1)
    runs = sorted((sweep_dir / "runs").iterdir())
    assert len(runs) == 2 and all(len(r.name.encode()) <= MAX_NAME_BYTES for r in runs)
    assert all([r["epoch"] for r in rundir.read_metrics(run)] == [1, 2] for run in runs)


def test_more_workers_than_cores_is_one_line(tmp_path, mnist_root):
    config = write_config(tmp_path / "c.yaml", mnist_root)
    result = subprocess.run(SWEEP + ["--config", str(config), "--dir", str(tmp_path / "s"), "--grid", "loss.beta=1",
                                     "--workers", "1000"], capture_output=True, text=True, timeout=60)
    assert "--workers 1000: this process may use" in one_error_line(result)


def test_a_figure_of_a_thousand_groups_is_drawn_within_the_image_size_limit(tmp_path):
    labels = [f"beta={i}" for i in range(1000)]
    plot_rate_split(labels, [1.0] * 1000, [2.0] * 1000, tmp_path / "split.png")
    assert imread(tmp_path / "split.png").shape[1] < 2**16


@pytest.mark.parametrize("text, expected", [
    ('{"config": 5}', "sweep.json is not a sweep this version can run"),
    ("[1, 2]", "sweep.json is not a sweep this version can run: not a mapping"),
    ('{"config": {}, "grid": {"loss.beta": ["1"]}, "seeds": "two"}', "seeds is not a int"),
])
def test_a_broken_sweep_json_is_one_line(tmp_path, text, expected):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "sweep.json").write_text(text)
    assert expected in one_error_line(subprocess.run(SWEEP + ["--resume", str(tmp_path / "s")], capture_output=True,
                                                     text=True, timeout=60))


def test_a_checkpoint_with_a_malformed_format_version_is_one_line(tmp_path):
    torch.save({"format_version": [4]}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match=r"bad.pt has a malformed checkpoint format \[4\]: not a checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")


def test_a_cached_evaluation_without_its_protocol_is_measured_again(tiny_cfg, tmp_path):
    run = train(tiny_cfg).run_dir
    compare([run], tmp_path / "c", ["eval.iwae_samples=4"])
    cached = json.loads((run / "eval" / "metrics.json").read_text())
    del cached["protocol"]
    (run / "eval" / "metrics.json").write_text(json.dumps(cached))
    assert compare([run], tmp_path / "c", ["eval.iwae_samples=4"])["runs"][0]["iwae_samples"] == 4


def test_a_run_with_a_broken_config_yaml_is_one_line_in_a_comparison(tiny_cfg, tmp_path):
    run = train(tiny_cfg).run_dir
    (run / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(UserError, match=rf"^{run} is not a run this version can compare: .*config.yaml is not valid "
                                        rf"YAML"):
        compare([run], tmp_path / "c")


@pytest.mark.parametrize("extra", [["--grid", "loss.beta=2"], ["train.epochs=5"], ["--seeds", "3"],
                                   ["--objectives", "loss"]])
def test_resume_refuses_what_it_would_ignore(tmp_path, mnist_root, extra):
    sweep_dir = sweep_of(tmp_path, mnist_root, ["loss.beta=1"])
    result = subprocess.run(SWEEP + ["--resume", str(sweep_dir), *extra], capture_output=True, text=True, timeout=60)
    assert "--resume continues the sweep as sweep.json describes it" in one_error_line(result)
    assert not list((sweep_dir / "runs").iterdir())
