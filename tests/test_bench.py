"""bench/speed.py keeps working: two epochs of both loops (and one fast setting) on the synthetic data."""
import re
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # starts processes: skipped by pytest -m "not slow"


def test_speed_benchmark_runs_both_loops_and_prints_the_ratio(mnist_root):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "speed.py"), "--data", str(mnist_root),
                             "--epochs", "2", "--device", "cpu", "--fast", "64:2e-3"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"floor at batch 128 .*examples\): fp32 [\d.]+ s/epoch, bf16 [\d.]+ s/epoch", result.stdout)
    rows = {line[:16].strip(): line for line in result.stdout.splitlines() if line.startswith(("reference", "ours"))}
    assert set(rows) == {"reference", "ours", "ours 64:2e-3"}
    for line in rows.values():
        assert float(re.search(r"final test\s+([\d.]+) nats", line).group(1)) < 400  # from ~543 at the start
        assert re.search(r"peak\s+\d+ MiB", line)
    assert re.search(r"ratio \(reference / ours\): [\d.]+x train", result.stdout)
