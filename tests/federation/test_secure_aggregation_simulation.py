"""Secure aggregation in Flower's simulation runtime (Ray, 5 SuperNodes, messages serialized): one
device fails in the middle of round 2's SecAgg+ exchange, after it shared its keys; the run completes,
no reply the ServerApp pulled holds (or is close to) a contribution, the unmasked sums are exactly
the survivors' quantized contributions, and U is the clear run's up to quantization."""

import os

import numpy as np
import pytest
import torch
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.serverapp import Grid, ServerApp

from fedlrs.client.app import make_client_app
from fedlrs.protocol.wire import quantized_parts, wire_parts
from fedlrs.federation_config import parse_run_config
from fedlrs.server.billboard import Billboard

from .fakes import FakeGrid
from .test_secure_aggregation import _close, _contribution, _fitins_U, _forms, _payloads, silent_in_the_clear

LOST = 2  # partition-id of the device that fails in round 2, after sharing its keys


def lose_device_in_round_2(message, context, call_next):
    """A device that crashes when asked for its masked vector in round 2 (the ClientApp replies an error)."""
    configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
    if (context.node_config.get("partition-id") == LOST and message.metadata.group_id == "2" and configs is not None
            and configs.get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS):
        raise RuntimeError("device lost")
    return call_next(message, context)


class RecordingView(Grid):
    """The ServerApp's Grid, recording every message pushed and every reply pulled."""

    def __init__(self, grid):
        self.grid, self.sent, self.received = grid, [], []

    def set_run(self, run):
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, *args, **kwargs):
        return self.grid.create_message(*args, **kwargs)

    def get_node_ids(self):
        """No node until all 5 SuperNodes are registered: the run starts with all of them (min-nodes is 4)."""
        nodes = list(self.grid.get_node_ids())
        return nodes if len(nodes) >= 5 else []

    def push_messages(self, messages):
        messages = list(messages)
        self.sent += messages
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids):
        replies = list(self.grid.pull_messages(message_ids))
        self.received += replies
        return replies

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("the billboard pushes and pulls itself")


@pytest.mark.slow
def test_secure_aggregation_in_the_simulation_runtime_with_a_device_lost_mid_round(small, tmp_path, monkeypatch):
    from flwr.simulation import run_simulation

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    base = {**small, "num-server-rounds": 2, "init": "random", "private": True, "noise-multiplier": 1.0,
            "target-epsilon": 100.0, "noise-seed": 3, "min-nodes": 4, "wait-for-nodes": 60.0, "round-timeout": 60.0}
    overrides = {**base, "secure-aggregation": "server-noise"}
    seen = {}
    server = ServerApp()

    @server.main()
    def main(grid, context):
        seen["view"] = view = RecordingView(grid)
        seen["billboard"] = billboard = Billboard(parse_run_config(overrides))
        seen["result"] = billboard.run(view)

    run_simulation(server_app=server, client_app=make_client_app(overrides, mods=[lose_device_in_round_2]),
                   num_supernodes=5, backend_config={"client_resources": {"num_cpus": 1},
                                                     "init_args": {"num_cpus": min(2, os.cpu_count() or 1)}})
    result, billboard, view = seen["result"], seen["billboard"], seen["view"]
    assert result.rounds_completed == 2 and result.stopped == "rounds done"
    assert billboard.counted == {1: 5, 2: 4}
    assert [r.round for r in result.refusals] == [2] and "device lost" in result.refusals[0].reason

    config = parse_run_config(overrides)
    forms = []
    for outcome in billboard.secure.rounds:
        U = next(_fitins_U(m) for m in view.sent if m.metadata.group_id == outcome.release.split("-")[1]
                 and RECORD_KEY_CONFIGS in m.content.config_records
                 and m.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE] == Stage.COLLECT_MASKED_VECTORS)
        spec = wire_parts(config, "round")
        contributions = {p: _contribution(config, p + 1, U) for p in range(5)}
        for parts in contributions.values():
            forms += _forms(parts, spec, outcome.bits)
        survivors = [p for p in range(5) if not (outcome.release == "round-2" and p == LOST)]
        expected = [sum(c) for c in zip(*(quantized_parts(contributions[p], spec, bits=outcome.bits) for p in survivors))]
        assert all(np.array_equal(s, e) for s, e in zip(outcome.signed, expected)), outcome.release
    assert len(view.received) >= 2 * 4 * 5 - 2
    for reply in view.received:
        assert not any(_close(p, f) for p in _payloads(reply) for f in forms)

    grid = FakeGrid(make_client_app(base), 5, tamper=silent_in_the_clear(LOST + 1))
    clear = Billboard(parse_run_config({**base, "round-timeout": 0.3, "wait-for-nodes": 0.0})).run(grid)
    assert torch.allclose(result.U, clear.U, atol=1e-5, rtol=0)
