"""What a run checks before it writes anything: clobbering, disk, data, compiler, memory; the lock."""
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, on_each_step, with_, write_config

from vae.config.schema import Config, TrainConfig
from vae.errors import MachineError, UserError
from vae.run import rundir
from vae.train import memory
from vae.train.loop import train
from vae.train.memory import estimate_bytes


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
    with pytest.raises(MachineError, match=r"only 1 MiB free on the disk of .*needs about \d+ MiB"):
        train(tiny_cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_missing_data_fails_before_anything_is_written(tiny_cfg, tmp_path):
    cfg = with_(tiny_cfg, data={"root": str(tmp_path / "empty")})
    with pytest.raises(UserError, match="MNIST files not found"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_compile_without_a_cpp_compiler_is_one_clear_error(tiny_cfg, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(UserError, match=r"^train.compile=true needs a C\+\+ compiler"):
        train(with_(tiny_cfg, train={"compile": True}))
    assert not Path(tiny_cfg.output.dir).exists()  # refused before anything was written


def test_compile_auto_without_a_cpp_compiler_times_and_trains_the_uncompiled_steps(tiny_cfg, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    result = train(with_(tiny_cfg, train={"compile": "auto", "precision": "auto"}))
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["compiled"] is False and sorted(info["step_ms"]) == ["bf16", "fp32"]
    assert [r["epoch"] for r in result.rows] == [1, 2]


def test_a_run_directory_held_by_another_training_is_refused_in_one_line(tiny_cfg):
    run = Path(tiny_cfg.output.dir)
    with rundir.locked(run):  # as a training process holds it
        with pytest.raises(UserError, match=r"^.*/run is being written by another training process \(pid \d+\): "
                                            r"wait for it to finish, or choose another output.dir=DIR$"):
            train(tiny_cfg)
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing of a run was written
    assert [r["epoch"] for r in train(tiny_cfg).rows] == [1, 2]  # released: the directory is free again


def test_two_trainings_started_at_once_into_one_directory_train_once(mnist_root, tmp_path):
    config = write_config(tmp_path / "c.yaml", mnist_root, epochs=3)
    cmd = [sys.executable, str(REPO / "train.py"), "--config", str(config), f"output.dir={tmp_path / 'run'}"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)
    (ok, _), (refused, error) = results
    assert (ok, refused) == (0, 2)
    assert re.fullmatch(r"error: .*(being written by another training process( \(pid \d+\))?|already holds a run).*\n",
                        error)
    assert [r["epoch"] for r in rundir.read_metrics(tmp_path / "run")] == [1, 2, 3]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["previous"] == []  # one invocation wrote it


def test_a_lock_left_by_a_killed_process_does_not_block_the_resume(tiny_cfg):
    run = Path(tiny_cfg.output.dir)
    train(tiny_cfg)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from vae.run.rundir import locked\nwith locked(Path(sys.argv[1])):\n"
                               "    print('held', flush=True)\n    time.sleep(300)\n", str(run)],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(UserError, match=f"being written by another training process \\(pid {holder.pid}\\)"):
        train(with_(tiny_cfg, train={"epochs": 3}), resume=run)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert [r["epoch"] for r in train(with_(tiny_cfg, train={"epochs": 3}), resume=run).rows] == [1, 2, 3]


def test_the_memory_estimate_counts_the_state_and_each_layers_activations():
    cfg = Config(train=TrainConfig(batch_size=100))  # 784-400-20 MLP, one sample of z per example
    parts = estimate_bytes(cfg, (1, 28, 28), 70_000)
    weights = (784 * 400 + 400) + (400 * 40 + 40) + (20 * 400 + 400) + (400 * 784 + 784)
    assert parts["weights, gradients and Adam's moments"] == 4 * 4 * weights  # 4 copies of fp32
    assert "the average of the weights" not in parts
    assert estimate_bytes(with_(cfg, train={"ema_decay": 0.999}), (1, 28, 28), 1)["the average of the weights"] \
        == 4 * weights
    # each layer's output per example, kept for backward and matched by its gradient, + the loss over 784 logits
    per_example = (400 + 400 + 40) + (400 + 400 + 784)
    assert parts["one batch's activations"] == 100 * 4 * (2 * per_example + 3 * 784)
    wide = estimate_bytes(with_(cfg, model={"hidden_dims": (65536, 65536)}), (1, 28, 28), 1)
    assert wide["weights, gradients and Adam's moments"] > 16 * 65536**2  # the 65536 x 65536 layer alone


def test_a_run_too_large_for_memory_is_refused_before_anything_is_written(tiny_cfg, monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**20)  # 1 MiB free
    with pytest.raises(UserError, match=r"^this run needs about 0\.\d\d GiB of memory on cpu \(weights, gradients "
                                        r"and Adam's moments 0\.00 GiB, one batch's activations 0\.00 GiB, "
                                        r"the images 0\.00 GiB\) but only 0\.00 GiB is available: lower "
                                        r"train.batch_size"):
        train(tiny_cfg)
    assert not Path(tiny_cfg.output.dir).exists()


def test_an_allocation_failure_during_training_is_one_line_and_keeps_the_checkpoint(tiny_cfg, monkeypatch):
    run = Path(tiny_cfg.output.dir)
    train(tiny_cfg)
    good = (run / "checkpoints" / "last.pt").read_bytes()

    def out_of_memory(step, *args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    on_each_step(monkeypatch, out_of_memory)
    with pytest.raises(UserError, match=r"^out of memory on cpu \(CUDA out of memory. Tried to allocate 20.00 GiB\); "
                                        r"the last checkpoint is kept"):
        train(with_(tiny_cfg, train={"epochs": 3}), resume=run)
    assert (run / "checkpoints" / "last.pt").read_bytes() == good
