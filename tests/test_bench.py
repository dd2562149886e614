"""The benchmarks keep working: bench/speed.py (two epochs of both loops and one fast setting on the synthetic
data) and bench/bf16_step.py."""
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


def test_bf16_step_benchmark_prints_both_precisions_and_their_ratio_for_each_batch():
    result = subprocess.run([sys.executable, str(REPO / "bench" / "bf16_step.py"), "--batches", "4,8", "--steps", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^\s+(\d+)\s+(step|first mm)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", result.stdout, re.M)
    assert [(batch, what) for batch, what, *_ in rows] == [("4", "step"), ("4", "first mm"), ("8", "step"),
                                                            ("8", "first mm")]
    for _, what, fp32, bf16, ratio in rows:
        if what == "step":  # milliseconds, so the printed ratio is that of the printed times
            assert float(ratio) == pytest.approx(float(bf16) / float(fp32), abs=0.01)
