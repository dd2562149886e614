"""The many-machines sweep against a real PostgreSQL server on loopback (.ci/run installs and starts
one and sets VAE_TEST_POSTGRES): two sweep processes, as on two machines, join one study."""
import os
import subprocess
import sys
import uuid

import pytest
from conftest import REPO, write_config

from vae.run import rundir

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


def test_an_unreachable_storage_is_one_clear_line(tmp_path, mnist_root):
    config = write_config(tmp_path / "c.yaml", mnist_root)
    result = subprocess.run(SWEEP + ["--config", str(config), "--grid", "loss.beta=1", "--dir", str(tmp_path / "s"),
                                     "--storage", "postgresql://vae:vae@127.0.0.1:1/nothing"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith("error: cannot open the sweep's storage postgresql://vae:vae@127.0.0.1:1/nothing")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "s").exists()
