"""bench/speed.py keeps working: one epoch of both loops on the synthetic data."""
import re
import subprocess
import sys

from conftest import REPO


def test_speed_benchmark_runs_both_loops_and_prints_the_ratio(mnist_root):
    result = subprocess.run([sys.executable, str(REPO / "bench" / "speed.py"), "--data", str(mnist_root),
                             "--epochs", "2", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:3]}
    assert set(rows) == {"reference", "ours"}
    for line in rows.values():
        assert float(re.search(r"final test\s+([\d.]+) nats", line).group(1)) < 400  # from ~543 at the start
    assert re.search(r"ratio \(reference / ours\): [\d.]+x train", result.stdout)
