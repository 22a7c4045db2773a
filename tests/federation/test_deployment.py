"""A real deployment on loopback: SuperLink + 3 SuperNodes with TLS and authentication, 3 rounds.

Runs scripts/deploy_local.sh, which stops every process it started by its PID (trap on exit),
checks the run's status with `flwr list --format json` and that a 4th node with an unregistered
key is refused.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_superlink_and_three_authenticated_supernodes_complete_a_private_run(tmp_path):
    env = {**os.environ, "NODES": "3", "ROUNDS": "3", "UNKNOWN_NODE": "1"}
    done = subprocess.run([str(REPO / "scripts" / "deploy_local.sh"), str(tmp_path)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert "run status: finished:completed" in done.stdout, done.stdout + done.stderr
    assert "unknown SuperNode refused: yes" in done.stdout
    assert done.returncode == 0
    report = json.loads((tmp_path / "checkpoint" / "privacy-report.json").read_text())
    assert report["rounds_completed"] == 3 and [e["release_id"] for e in report["events"]] == ["round-1", "round-2", "round-3"]
    for i in (1, 2, 3):  # each device kept its w_i, b_i on disk
        assert (tmp_path / "state" / f"node-{i}" / "fedlrs-local-state.npz").is_file()
    pids = [int((tmp_path / "logs" / f"supernode-{i}.pid").read_text()) for i in (1, 2, 3, 4)]
    for pid in pids:  # every process was stopped
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
