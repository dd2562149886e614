"""The commands outside the checkout: shipped configs found by name, `python -m vae`, and `pip install .` into a
fresh virtual environment giving vae-train, vae-evaluate and vae-sweep that work from any directory."""
import os
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import REPO

from vae.config.load import config_file, load_config
from vae.errors import UserError

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


@pytest.mark.slow
def test_python_m_vae_runs_each_command_from_another_directory(tmp_path, mnist_root):
    def vae(*args):
        return subprocess.run([sys.executable, "-m", "vae", *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    done = vae("train", "--config", "mnist", f"data.root={mnist_root}", *SMALL)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "outputs" / "mnist" / "checkpoints" / "last.pt").is_file()
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
    evaluate = subprocess.run([str(bin_dir / "vae-evaluate"), "--checkpoint", str(run), "eval.iwae_samples=2"],
                              cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert evaluate.returncode == 0, evaluate.stderr
    assert "vaeExplorer" in (run / "report.html").read_text()  # explorer.js shipped with the package
    sweep = subprocess.run([str(bin_dir / "vae-sweep"), "--help"], cwd=elsewhere, env=env, capture_output=True,
                           text=True, timeout=300)
    assert sweep.returncode == 0 and "usage: vae-sweep" in sweep.stdout
