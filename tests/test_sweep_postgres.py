"""The many-machines sweep against a real PostgreSQL server on loopback (.ci/run installs and starts
one and sets VAE_TEST_POSTGRES): two sweep processes, as on two machines, join one study."""
import json
import os
import subprocess
import sys
import uuid

import pytest
from conftest import REPO, write_config

from vae.config.load import load_config, to_dict
from vae.run import rundir
from vae.sweep.spec import Sweep, without_password
from vae.sweep.storage import STORAGE_ENV
from vae.sweep.study import create

URL = os.environ.get("VAE_TEST_POSTGRES", "")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not URL, reason="no PostgreSQL server: set VAE_TEST_POSTGRES=postgresql://... "
                                                 "(.ci/run installs and starts one)")]
SWEEP = [sys.executable, str(REPO / "sweep.py")]


def test_two_machines_share_one_study_and_train_every_grid_point_once(tmp_path, mnist_root):
    config = write_config(tmp_path / "c.yaml", mnist_root)
    study = f"test-{uuid.uuid4().hex[:8]}"
    args = ["--config", str(config), "--grid", "loss.beta=0.25,0.5,1,2,4", "--storage", URL, "--study", study]
    machines = [subprocess.Popen(SWEEP + args + ["--dir", str(tmp_path / name)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for name in ("a", "b")]
    for proc in machines:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    runs = [run for name in ("a", "b") for run in (tmp_path / name / "runs").iterdir()]
    assert sorted(run.name.split("=")[-1] for run in runs) == ["0.25", "0.5", "1", "2", "4"]  # each once
    assert all((tmp_path / name / "runs").iterdir() for name in ("a", "b"))  # both machines trained
    for run in runs:
        assert [r["epoch"] for r in rundir.read_metrics(run)] == [1, 2]


def files_under(folder):
    return [p for p in folder.rglob("*") if p.is_file()]


def test_the_password_is_never_shown_or_stored_and_a_resume_finds_it_where_postgresql_users_keep_it(
        tmp_path, mnist_root):
    password = URL.split("://", 1)[1].split("@", 1)[0].partition(":")[2]
    assert password and password not in URL.replace(f":{password}@", "@"), \
        "VAE_TEST_POSTGRES needs a password that is not also its user or database name"
    config = write_config(tmp_path / "c.yaml", mnist_root, epochs=1)
    study = f"test-{uuid.uuid4().hex[:8]}"
    first = subprocess.run(SWEEP + ["--config", str(config), "--grid", "loss.beta=0.5,1", "--storage", URL,
                                    "--study", study, "--dir", str(tmp_path / "s"), "--workers", "2"],
                           capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert password not in first.stdout + first.stderr
    for path in files_under(tmp_path / "s"):
        assert password.encode() not in path.read_bytes(), path
    stored = json.loads((tmp_path / "s" / "sweep.json").read_text())["storage"]
    assert stored == URL.replace(f":{password}@", "@")
    env = {**os.environ, "PGPASSWORD": password}  # as libpq reads it; ~/.pgpass works the same way
    again = subprocess.run(SWEEP + ["--resume", str(tmp_path / "s")], capture_output=True, text=True, timeout=120,
                           env=env)
    assert again.returncode == 0 and "2 of 2 trials complete" in again.stdout, again.stderr
    given = subprocess.run(SWEEP + ["--resume", str(tmp_path / "s"), "--storage", URL], capture_output=True,
                           text=True, timeout=120)  # or the URL given again
    assert given.returncode == 0 and password not in given.stdout + given.stderr, given.stderr


def test_another_sweep_is_refused_by_the_shared_study_it_would_have_merged_into(tmp_path, mnist_root, monkeypatch):
    config = write_config(tmp_path / "c.yaml", mnist_root, epochs=1)
    study = f"test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(STORAGE_ENV, URL)  # as sweep.py does with a password in --storage
    create(Sweep(config=to_dict(load_config(config)), grid={"loss.beta": ["1"]}, storage=without_password(URL),
                 study=study), tmp_path / "a")  # the first sweep made the study (nothing trained)
    other = subprocess.run(SWEEP + ["--config", str(config), "--storage", URL, "--study", study,
                                    "--grid", "loss.beta=2,4", "--dir", str(tmp_path / "b")],
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert f"the study '{study}'" in other.stderr and "belongs to another sweep" in other.stderr
    assert not (tmp_path / "b" / "sweep.json").exists()
