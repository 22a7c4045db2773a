"""A real deployment on loopback (tests/federation/deployment.py): SuperLink + 5 SuperNodes, TLS, SuperNode auth.

One deployment, three checks:
1. a SuperNode whose key was never registered is refused;
2. run A: one SuperNode is SIGKILLed (by PID) after round 1; the run still completes
   (``flwr list --format json`` says ``finished:completed``, the report says which replies were missing);
3. run B, the same rounds under secure aggregation (SecAgg+, server noise) on the 4 nodes left: one more
   SuperNode is SIGKILLed once round 1 is checkpointed (so during round 2's protocol), then the SuperLink
   (and its ServerApp) once round 2 is checkpointed; restarted on the same database and port, the run
   submitted again with the same checkpoint-dir resumes after round 2, completes with the 3 devices left,
   and its ledger equals run A's (time and note aside); its report passes the audit.
Every process started is stopped by its PID (``LocalDeployment.stop_all`` in a finally block).
"""

import json
import time

import pytest
import torch

from fedlrs.privacy import Ledger, audit_report

from .deployment import LocalDeployment, alive

NODES = 5
ROUNDS = 3


def _config(checkpoint, *, min_nodes=NODES - 1, secure="off"):
    return (f"num-server-rounds={ROUNDS} dim=10 rank=2 sparsity=1 starts=2 dataset='node' min-nodes={min_nodes} "
            f"secure-aggregation='{secure}' "
            f"wait-for-nodes=60.0 round-timeout=120.0 init='random' personalize-at-end=false private=true "
            f"target-epsilon=10.0 accountant='rdp' checkpoint-dir='{checkpoint}'")


def _checkpointed_round(folder) -> int:
    path = folder / "billboard.pt"
    if not path.is_file():
        return -1
    try:
        return int(torch.load(path, weights_only=True)["round"])
    except Exception:  # noqa: BLE001 - being replaced right now
        return -1


def _wait_checkpoint(folder, round_number, seconds):
    deadline = time.monotonic() + seconds
    while _checkpointed_round(folder) < round_number:
        if time.monotonic() > deadline:
            raise TimeoutError(f"round {round_number} not checkpointed in {folder} within {seconds} s")
        time.sleep(0.1)


def _strip(path):
    """The ledger's events without their time and note (the note names the secure aggregation mode)."""
    return [{k: v for k, v in e.to_dict().items() if k not in ("time", "note")} for e in Ledger.load(path).events]


@pytest.mark.slow
def test_deployment_survives_a_killed_supernode_and_a_restarted_superlink(tmp_path):
    deployment = LocalDeployment(tmp_path, NODES)
    try:
        deployment.start_superlink()
        for i in range(1, NODES + 1):
            deployment.register(i)
        deployment.write_data(NODES + 1)
        for i in range(1, NODES + 2):  # node NODES + 1 has a key that was never registered
            deployment.start_supernode(i)
        for i in range(1, NODES + 1):
            deployment.wait_for_log(f"supernode-{i}", "SuperNode ID", 120)
        unknown = f"supernode-{NODES + 1}"
        deployment.processes[unknown].wait(timeout=60)
        assert "SuperNode ID" not in deployment.log(unknown)
        assert deployment.processes[unknown].returncode != 0

        # run A: SuperNode 5 is killed after round 1
        run_a = deployment.submit(_config(tmp_path / "a"))
        _wait_checkpoint(tmp_path / "a", 1, 240)
        killed = deployment.processes[f"supernode-{NODES}"].pid
        deployment.kill(f"supernode-{NODES}")
        assert not alive(killed)
        assert deployment.wait_run(run_a, 300) == "finished:completed"
        facts = json.loads((tmp_path / "a" / "run.json").read_text())["run"]
        assert facts["rounds_completed"] == ROUNDS and facts["stopped"] == "rounds done"
        assert facts["refused_replies"] == 0  # the SuperLink's "node unavailable" answers are dropouts, not refusals
        assert facts["counted_replies"]["1"] == NODES  # before the kill, every node's contribution was counted
        assert facts["counted_replies"][str(ROUNDS)] <= NODES - 1
        audit = audit_report(tmp_path / "a" / "privacy_report.json", ledger_path=tmp_path / "a" / "ledger.jsonl")
        assert audit.ok, audit.reasons

        # run B, under SecAgg+ (server noise) on the 4 nodes left: SuperNode 4 is SIGKILLed once round 1 is
        # checkpointed (so in round 2's protocol), then the SuperLink and its ServerApp once round 2 is
        # checkpointed; restarted on the same database and port, the run submitted again resumes after round 2
        secure = {"min_nodes": NODES - 2, "secure": "server-noise"}
        run_b = deployment.submit(_config(tmp_path / "b", **secure))
        _wait_checkpoint(tmp_path / "b", 1, 240)
        deployment.kill(f"supernode-{NODES - 1}")
        _wait_checkpoint(tmp_path / "b", 2, 240)  # round 2 completed without the killed device
        deployment.kill("superlink")
        assert _checkpointed_round(tmp_path / "b") == 2
        deployment.start_superlink()  # the SuperNodes reconnect by themselves; the billboard waits for min-nodes
        resumed = deployment.submit(_config(tmp_path / "b", **secure))
        assert deployment.wait_run(resumed, 300) == "finished:completed"
        assert deployment.runs()[run_b]["status"] != "finished:completed"
        assert _checkpointed_round(tmp_path / "b") == ROUNDS
        assert _strip(tmp_path / "b" / "ledger.jsonl") == _strip(tmp_path / "a" / "ledger.jsonl")
        events = Ledger.load(tmp_path / "b" / "ledger.jsonl").events
        assert [e.release_id for e in events] == [f"round-{r}" for r in range(1, ROUNDS + 1)]
        assert all(e.note.startswith("secure aggregation (SecAgg+)") for e in events)
        releases = json.loads((tmp_path / "b" / "secure_aggregation.json").read_text())["releases"]
        assert [r["release"] for r in releases] == [f"round-{r}" for r in range(1, ROUNDS + 1)]  # kept across the resume
        assert not any(r["aborted"] or r["refusals"] for r in releases)
        assert [len(r["counted"]) for r in releases] == [NODES - 1] + [NODES - 2] * (ROUNDS - 1)
        audit = audit_report(tmp_path / "b" / "privacy_report.json", ledger_path=tmp_path / "b" / "ledger.jsonl")
        assert audit.ok, audit.reasons
        for i in range(1, NODES):  # each device kept its w_i, b_i on disk
            assert (tmp_path / "state" / f"node-{i}" / "fedlrs-local-state.npz").is_file()
    finally:
        deployment.stop_all()
    assert not any(alive(pid) for pid in deployment.started_pids)
