"""benchmarks/engine_round.py runs every in-process backend on the same users and prints its table."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_engine_round_benchmark_prints_each_backend_with_its_ratio(tmp_path):
    out = tmp_path / "table.txt"
    command = [sys.executable, str(ROOT / "benchmarks" / "engine_round.py"), "--users", "300", "--modes", "ls", "--backends", "memory,streamed",
               "--repeats", "1", "--threads", "1", "--chunk-users", "128", "--data-dir", str(tmp_path / "data"), "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    rows = [line.split() for line in out.read_text().splitlines() if line.startswith("  ls")]
    assert [row[2] for row in rows] == ["memory", "streamed"]
    assert rows[0][-1] == "1.00" and float(rows[1][-1]) > 0  # the ratio to the memory backend of the same invocation
    assert (tmp_path / "data" / "users-300" / "train.parquet").exists()
