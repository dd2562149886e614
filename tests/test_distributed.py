"""torchrun: two gloo processes on the CPU train what one process trains with the same global batch."""
import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, write_config
from test_training import with_

from vae.run import rundir
from vae.run.checkpoint import load_checkpoint
from vae.train.distributed import World
from vae.train.loop import train

pytestmark = pytest.mark.slow  # starts processes: skipped by pytest -m "not slow"


def torchrun(*args):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(REPO / "train.py"), *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_shards_split_a_batch_between_ranks_without_overlap():
    batch = torch.arange(7)
    shards = [World(rank, 3).shard(batch) for rank in range(3)]
    assert [s.tolist() for s in shards] == [[0, 3, 6], [1, 4], [2, 5]]


def assert_close_runs(a, b):
    """Same weights and the same metrics, up to the order in which the ranks' sums are added."""
    wa, wb = load_checkpoint(a / "checkpoints" / "last.pt")[0], load_checkpoint(b / "checkpoints" / "last.pt")[0]
    assert wa["epoch"] == wb["epoch"]
    for k in wa["model"]:
        torch.testing.assert_close(wa["model"][k], wb["model"][k], rtol=1e-4, atol=1e-5)
    ra, rb = rundir.read_metrics(a), rundir.read_metrics(b)
    assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb]
    for x, y in zip(ra, rb):
        for k in ("train_loss", "train_recon", "train_kl", "test_loss", "test_recon", "test_kl"):
            assert x[k] == pytest.approx(y[k], rel=1e-5), k


@pytest.fixture(scope="module")
def config_file(tmp_path_factory, mnist_root):
    # 640 examples in batches of 60: the last batch of each epoch is short (40), and odd shares are uneven
    return write_config(tmp_path_factory.mktemp("ddp") / "tiny.yaml", mnist_root, batch_size=60, lr=3.0e-3,
                        seed=3, checkpoint_every_steps=4)


def test_two_gloo_processes_match_one_process_and_resume_the_same(config_file, tiny_cfg, tmp_path):
    two = tmp_path / "two"
    result = torchrun("--config", config_file, f"output.dir={two}")
    assert result.returncode == 0, result.stderr
    assert "x 2 processes" in result.stdout
    assert sum(line.startswith("epoch") for line in result.stdout.splitlines()) == 2  # rank 0 prints alone
    assert json.loads((two / "run.json").read_text())["processes"] == 2

    cfg = with_(tiny_cfg, train={"batch_size": 60, "checkpoint_every_steps": 4})
    one = train(with_(cfg, output={"dir": str(tmp_path / "one")})).run_dir
    assert_close_runs(one, two)
    assert sorted(p.name for p in (two / "images").iterdir()) == sorted(p.name for p in (one / "images").iterdir())

    result = torchrun("--resume", two, "train.epochs=3")
    assert result.returncode == 0, result.stderr
    assert "epochs 3..3" in result.stdout
    train(with_(cfg, train={"epochs": 3}, output={"dir": str(one)}), resume=one)
    assert_close_runs(one, two)


def test_free_bits_clamp_the_whole_batch_mean_under_torchrun(config_file, tiny_cfg, tmp_path):
    # A dimension counts as free when its rate averaged over the global batch is under the floor,
    # not over one process's share: the two processes' gradients add up to one process's. (The 4
    # dimensions' rates cross 0.9 nats during these 2 epochs; clamping each share's mean fails this.)
    two = tmp_path / "two"
    result = torchrun("--config", config_file, f"output.dir={two}", "loss.free_bits=0.9")
    assert result.returncode == 0, result.stderr
    cfg = with_(tiny_cfg, train={"batch_size": 60, "checkpoint_every_steps": 4}, loss={"free_bits": 0.9})
    assert_close_runs(train(with_(cfg, output={"dir": str(tmp_path / "one")})).run_dir, two)


def test_a_vamp_prior_and_a_flow_under_torchrun_match_one_process(config_file, tiny_cfg, tmp_path):
    # The learned prior's pseudo-inputs and the flow's MADEs are parameters DDP must average like the rest.
    choice = {"prior": "vamp", "prior_components": 5, "posterior": "flow", "flow_steps": 2, "flow_hidden": 16}
    two = tmp_path / "two"
    result = torchrun("--config", config_file, f"output.dir={two}", *(f"model.{k}={v}" for k, v in choice.items()),
                      "loss.iwae_k=2")
    assert result.returncode == 0, result.stderr
    cfg = with_(tiny_cfg, train={"batch_size": 60, "checkpoint_every_steps": 4}, model=choice, loss={"iwae_k": 2})
    assert_close_runs(train(with_(cfg, output={"dir": str(tmp_path / "one")})).run_dir, two)
