"""Kill the training process for real, at random moments, and check that nothing is lost."""
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import REPO, write_config

from vae.config.load import load_config
from vae.errors import Interrupted
from vae.run import rundir
from vae.run.checkpoint import load_checkpoint
from vae.run.resume import last_position
from vae.train.interrupt import StopRequest
from vae.train.loop import train

pytestmark = pytest.mark.slow  # starts processes: skipped by pytest -m "not slow"

KILLS = int(os.environ.get("VAE_FAULT_KILLS", 4))  # more for a soak: VAE_FAULT_KILLS=30


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_root):
    """A config that checkpoints every 2 steps, and its uninterrupted in-process run (with wall time)."""
    base = tmp_path_factory.mktemp("faults")
    config = write_config(base / "faults.yaml", mnist_root, hidden=64, epochs=4, batch_size=32,
                          checkpoint_every_steps=2)
    t0 = time.perf_counter()
    result = train(load_config(config, [f"output.dir={base / 'reference'}"]))
    return config, result, time.perf_counter() - t0


def start(*args):
    proc = subprocess.Popen([sys.executable, "-u", str(REPO / "train.py"), *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()  # "training ..." once imports, data and the run directory are ready
    return proc


def under_way(proc, run):
    """Wait until the run's first checkpoint (2 of its 80 steps) is written: a signal sent then lands mid-run however
    fast the machine runs now (a sleep scaled by the reference's time missed the run when the load changed)."""
    while proc.poll() is None and last_position(run) == (0, 0):
        time.sleep(0.01)


def assert_same_run(run, reference):
    final, _ = load_checkpoint(run / "checkpoints" / "last.pt")
    for k, v in reference.model.state_dict().items():
        assert torch.equal(final["model"][k], v), k
    rows = rundir.read_metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]  # each epoch exactly once
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows] == \
           [{k: v for k, v in r.items() if k != "seconds"} for r in reference.rows]
    assert list(run.rglob(".*.tmp")) == []


def test_kill_9_at_random_moments_then_resume_is_bitwise_exact(reference, tmp_path):
    config, expected, seconds = reference
    run, rng, kills = tmp_path / "run", random.Random(20261126), 0
    end = (4, 0)  # (epochs done, steps into the next): where the finished run stands
    steps = 4 * 20  # 640 examples in batches of 32, 4 epochs
    while last_position(run) < end:
        resumable = (run / "checkpoints" / "last.pt").exists()
        proc = start(*(["--resume", run] if resumable else ["--config", config, f"output.dir={run}"]))
        if kills < KILLS:
            epochs, step = last_position(run)
            time.sleep(rng.uniform(0, seconds * (1 - (20 * epochs + step) / steps)))  # within the work left
            if proc.poll() is None and last_position(run) < end:
                proc.kill()  # SIGKILL: no handler, no cleanup
                kills += 1
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, -signal.SIGKILL), err
        if (run / "checkpoints" / "last.pt").exists():
            load_checkpoint(run / "checkpoints" / "last.pt")  # always loadable
    print(f"{kills} kills of a running training process survived")
    assert kills >= KILLS // 2  # a kill only counts when it hit a run with work left
    assert_same_run(run, expected)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_says_how_to_resume_and_exits_128_plus_signal(reference, tmp_path, sig, code):
    config, expected, _ = reference
    run = tmp_path / "run"
    proc = start("--config", config, f"output.dir={run}")
    under_way(proc, run)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and f"python train.py --resume {run}" in err, err
    assert "Traceback" not in err
    assert last_position(run) < (4, 0)
    train(load_config(config, [f"output.dir={run}"]), resume=run)  # in process: the kill tests resume by CLI
    assert_same_run(run, expected)


def test_a_second_signal_stops_at_once():
    before = signal.getsignal(signal.SIGINT)  # not always Python's default: a background job starts ignoring it
    with StopRequest() as stop:
        stop._handle(signal.SIGINT, None)
        assert stop.signum == signal.SIGINT  # the first only asks the loop to stop
        with pytest.raises(Interrupted, match="again: stopped at once"):
            stop._handle(signal.SIGINT, None)
    assert signal.getsignal(signal.SIGINT) is before


def test_two_quick_ctrl_c_leave_no_damage(reference, tmp_path):
    config, _, _ = reference
    run = tmp_path / "run"
    proc = start("--config", config, f"output.dir={run}")
    under_way(proc, run)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    assert list(run.rglob(".*.tmp")) == []
    if (run / "checkpoints" / "last.pt").exists():
        load_checkpoint(run / "checkpoints" / "last.pt")
