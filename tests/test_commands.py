"""The commands outside the checkout: shipped configs found by name, `python -m vae`, and `pip install .` into a
fresh virtual environment giving vae-train, vae-evaluate and vae-sweep that work from any directory."""
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from vae.cli import INVOKED_AS, invoked_as
from vae.config.load import config_file, load_config, to_dict
from vae.errors import UserError
from vae.train.distributed import World
from vae.train.interrupt import StopRequest
from vae.train.loop import stopped

SMALL = ["model.hidden_dims=[16]", "model.latent_dim=2", "train.epochs=1", "train.device=cpu", "data.download=false"]


def test_a_shipped_config_is_found_by_name_where_no_such_file_is():
    assert config_file("mnist") == config_file("mnist.yaml") == REPO / "configs" / "mnist.yaml"
    assert load_config("mnist_cpu_hour").model.prior == "mog"
    assert load_config("mnist").output.dir == "outputs/mnist"
    with pytest.raises(UserError, match=r"config file not found: mnsit \(the shipped configs, by name: mnist, "
                                        r"mnist_cpu_hour, .*\)"):
        config_file("mnsit")
    with pytest.raises(UserError, match="config file not found: elsewhere/mnist.yaml"):
        config_file("elsewhere/mnist.yaml")  # a path is a path


def test_a_local_file_named_like_a_shipped_config_wins_over_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist.yaml").write_text("train:\n  epochs: 7\n")
    assert config_file("mnist") == config_file("mnist.yaml") == Path("mnist.yaml")
    assert load_config("mnist").train.epochs == 7
    assert config_file("mnist_cpu_hour") == REPO / "configs" / "mnist_cpu_hour.yaml"  # no such file here
    for nameless in (".", "", "/"):
        with pytest.raises(UserError, match="config file not found"):
            config_file(nameless)


def test_print_config_prints_the_resolved_yaml_and_trains_nothing(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", "mnist_cpu_hour", "--print-config",
                           "train.epochs=3", "model.latent_dim=7"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    printed = yaml.safe_load(done.stdout)
    expected = to_dict(load_config(REPO / "configs" / "mnist_cpu_hour.yaml", ["train.epochs=3", "model.latent_dim=7"]))
    assert printed == expected and printed["train"]["epochs"] == 3 and printed["model"]["prior"] == "mog"
    assert list(tmp_path.iterdir()) == []  # no run directory, no outputs/


@pytest.mark.parametrize("argv0, world, expected", [
    ("/home/u/.venv/bin/vae-train", 1, "vae-train --resume R"),
    ("python -m vae train", 1, "python -m vae train --resume R"),
    ("train.py", 1, "python train.py --resume R"),
    ("/home/u/.venv/bin/vae-train", 2, "torchrun --nproc_per_node 2 --no-python vae-train --resume R"),
    ("python -m vae train", 2, "torchrun --nproc_per_node 2 -m vae train --resume R"),
    ("/checkout/train.py", 2, "torchrun --nproc_per_node 2 train.py --resume R"),
])
def test_the_hint_after_a_stop_names_the_command_as_the_user_ran_it(monkeypatch, argv0, world, expected):
    monkeypatch.setattr(sys, "argv", [argv0])
    monkeypatch.delenv(INVOKED_AS, raising=False)
    stop = stopped(StopRequest(), "in epoch 2", Path("R"), World(size=world, rank=0, local_rank=0))
    assert str(stop) == f"stopped in epoch 2; continue with: {expected}"
    monkeypatch.setenv(INVOKED_AS, "module")  # a sweep's worker: the style of the sweep the user ran
    assert invoked_as("evaluate") == "python -m vae evaluate"


def test_python_m_vae_help_lists_the_commands_and_exits_0():
    done = subprocess.run([sys.executable, "-m", "vae", "--help"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: python -m vae {train,evaluate,sweep}")
    assert all(f"\n  {name} " in done.stdout for name in ("train", "evaluate", "sweep"))


@pytest.mark.slow
def test_python_m_vae_runs_each_command_from_another_directory(tmp_path, mnist_root):
    def vae(*args):
        return subprocess.run([sys.executable, "-m", "vae", *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    done = vae("train", "--config", "mnist", f"data.root={mnist_root}", *SMALL)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "outputs" / "mnist" / "checkpoints" / "last.pt").is_file()
    again = vae("train", "--config", "mnist", f"data.root={mnist_root}", *SMALL)  # the hints name this command
    assert again.returncode == 2 and "resume it with python -m vae train --resume outputs/mnist," in again.stderr
    flag = vae("train", "--config", "mnist", "--epochs", "3")
    assert flag.stderr.strip() == ("error: unrecognized arguments: --epochs; set config keys as section.key=value: "
                                   "train.epochs=3 (see python -m vae train --help)")
    wrong = vae("nonsense")
    assert wrong.returncode == 2 and "usage: python -m vae {train,evaluate,sweep}" in wrong.stderr
    bad = vae("evaluate", "--checkpoint", "nowhere")
    assert bad.returncode == 2 and bad.stderr.strip() == "error: checkpoint not found: nowhere"


@pytest.mark.slow
def test_pip_install_gives_commands_that_work_outside_the_checkout(tmp_path, mnist_root):
    """A fresh venv with this project pip-installed (built from a copy of the tree, not editable). Its dependencies
    come from this environment's site-packages, added after the install, so the test downloads no torch."""
    source = tmp_path / "source"
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"],
                           check=True, capture_output=True, text=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((REPO / name).read_bytes())
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--quiet", str(source)],
                             capture_output=True, text=True, env=env, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True, env=env).stdout.strip()
    ours = [sysconfig.get_paths()["purelib"], *site.getsitepackages()]
    Path(purelib, "dependencies.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([str(python), "-c", "import vae; print(vae.__file__)"], cwd=elsewhere, env=env,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(purelib)  # the installed copy, not the checkout
    train = subprocess.run([str(bin_dir / "vae-train"), "--config", "mnist", f"data.root={mnist_root}", *SMALL],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert train.returncode == 0, train.stderr
    run = elsewhere / "outputs" / "mnist"
    again = subprocess.run([str(bin_dir / "vae-train"), "--config", "mnist", "--epochs", "3"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.stderr.strip() == ("error: unrecognized arguments: --epochs; set config keys as section.key=value: "
                                    "train.epochs=3 (see vae-train --help)")
    again = subprocess.run([str(bin_dir / "vae-train"), "--config", "mnist", f"data.root={mnist_root}", *SMALL],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "resume it with vae-train --resume outputs/mnist," in again.stderr
    evaluate = subprocess.run([str(bin_dir / "vae-evaluate"), "--checkpoint", str(run), "eval.iwae_samples=2"],
                              cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert evaluate.returncode == 0, evaluate.stderr
    assert "vaeExplorer" in (run / "report.html").read_text()  # explorer.js shipped with the package
    sweep = subprocess.run([str(bin_dir / "vae-sweep"), "--help"], cwd=elsewhere, env=env, capture_output=True,
                           text=True, timeout=300)
    assert sweep.returncode == 0 and "usage: vae-sweep" in sweep.stdout
