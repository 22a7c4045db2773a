"""LRS-NN on Flower: a fake Grid drives the network billboard, the ClientApp is called directly.

Fidelity: for the same seed, the Flower run and :func:`fedlrs.nn.federated.run_federated`
give the same shared state (non-private) and the same ledger, clip bounds and shared state
(private, same noise seed; adaptive clipping by default, and the fixed bound). Replies hold
the clipped contribution (and with adaptive clipping its norm's one-hot bin) and nothing else.
"""

import json
import os

import pytest
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedlrs.client.app import make_client_app
from fedlrs.federation_config import ConfigError, parse_run_config
from fedlrs.tasks.network import run_federated
from fedlrs.client.network import PERSONAL_STATE
from fedlrs.nn.run_config import network_config, network_method, node_task
from fedlrs.privacy import Ledger, audit_report
from fedlrs.server.app import make_server_app
from fedlrs.server.network import NetworkBillboard

from federation.conftest import task_identity  # noqa: F401 (autouse: what a SuperLink sets before messages exist)
from federation.fakes import FakeGrid  # tests/ is on sys.path (rootdir-relative packages)

pytestmark = pytest.mark.usefixtures("one_thread")

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")

USERS = 40  # nn-synthetic: 40 users of 20 examples, MLP 8 -> 16 -> 3
BASE = {"task": "nn-synthetic", "num-server-rounds": 3, "sample-rate": 0.5, "seed": 3, "dtype": "float64",
        "nn-rank": 2, "nn-sparsity": 4, "nn-local-steps": 2, "nn-server-lr": 0.5, "nn-clip": 0.5,
        "wait-for-nodes": 0.0, "personalize-at-end": False}


def _flower(overrides, tamper=None):
    grid = FakeGrid(make_client_app(overrides), USERS, tamper=tamper)
    return NetworkBillboard(parse_run_config(overrides)).run(grid), grid


def _in_process(overrides):
    config = parse_run_config(overrides)
    task = node_task(config.task, config.data_seed, config.nn_quick)
    return run_federated(network_method(config, task), task.train, network_config(config))


def _strip(ledger):
    return [{k: v for k, v in e.to_dict().items() if k != "time"} for e in ledger.events]


def test_flower_and_run_federated_give_the_same_shared_state():
    flower, grid = _flower(BASE)
    engine = _in_process(BASE)
    assert flower.rounds_completed == 3 and flower.refusals == [] and flower.dropped == []
    assert list(flower.shared) == list(engine.shared)
    for key, value in engine.shared.items():
        assert torch.allclose(flower.shared[key], value, atol=1e-6, rtol=0), key
    assert 0 < len(flower.sampled[1]) < USERS  # q = 0.5 sampled some of the nodes
    # w_i, b_i stay on the device, and match the in-process users' (sampled every round alike)
    node = flower.sampled[3][0]
    state = grid.contexts[node].state.array_records[PERSONAL_STATE]
    assert set(state.keys()) == {"w", "b"} and (state["b"].numpy() != 0).sum() <= 4


@pytest.mark.parametrize("quantile", [0.5, 0.0], ids=["adaptive", "fixed"])
def test_private_flower_run_has_the_in_process_ledger_bounds_and_shared_state(quantile):
    """A fixed z and no report keep it fast (calibration and the audited report: tests/nn/test_federated.py).
    With adaptive clipping (the default) both learn the same bound each round from the same released histogram."""
    overrides = {**BASE, "private": True, "noise-multiplier": 1.5, "target-epsilon": 20.0, "noise-seed": 7, "clip-quantile": quantile,
                 "num-server-rounds": 4}
    flower, _ = _flower(overrides)
    engine = _in_process(overrides)
    assert _strip(flower.ledger) == _strip(engine.ledger)
    assert [e.release_id for e in flower.ledger.events] == ["round-1", "round-2", "round-3", "round-4"]
    assert all(e.noise_multiplier == 1.5 and e.sample_rate == 0.5 for e in flower.ledger.events)
    assert list(flower.clip_bounds.values()) == engine.clip_bounds and list(flower.clip_bounds) == [1, 2, 3, 4]
    assert engine.clip_bounds[0] == 0.5 and (len(set(engine.clip_bounds)) > 1) == (quantile > 0)
    for key, value in engine.shared.items():
        assert torch.allclose(flower.shared[key], value, atol=1e-6, rtol=0), key


@pytest.mark.parametrize("quantile", [0.5, 0.0], ids=["adaptive", "fixed"])
def test_replies_carry_the_clipped_contribution_and_nothing_else(quantile):
    """Round 2 of an adaptive run: the round config names the round's bound, the contribution is clipped to it and
    ``H`` is the one-hot bin of the unclipped norm; with clip-quantile 0 the reply is the contribution alone."""
    from fedlrs.privacy.adaptive import relative_grid

    overrides = {**BASE, "private": True, "noise-multiplier": 1.0, "target-epsilon": 50.0, "noise-seed": 0, "num-server-rounds": 2,
                 "clip-quantile": quantile}
    replies = []

    def spy(node, message, reply):
        replies.append((message, reply))
        return reply

    result, _ = _flower(overrides, tamper=spy)
    replies = [(m, r) for m, r in replies if m.metadata.group_id == "2"]
    assert replies and len(replies) == len(result.sampled[2])
    dimension = sum(v.numel() for v in result.shared.values())
    bound = result.clip_bounds[2]
    assert (bound != 0.5) == (quantile > 0)
    for message, reply in replies:
        assert set(reply.content.keys()) == {"contribution"}
        record = reply.content.array_records["contribution"]
        assert list(record.keys()) == (["contribution", "H"] if quantile else ["contribution"])
        assert record["contribution"].shape == (dimension,)
        assert torch.linalg.vector_norm(torch.from_numpy(record["contribution"].numpy())) <= bound * (1 + 1e-9)
        settings = message.content.config_records["round-config"]
        if quantile:
            assert settings["clip-bound"] == bound
            H = record["H"].numpy()
            assert H.shape == (len(relative_grid(bound)),) and sorted(H) == [0.0] * (len(H) - 1) + [1.0]
        else:
            assert "clip-bound" not in settings


@pytest.mark.parametrize("kind", ["norm", "extra", "nan", "H-split", "H-negative", "H-missing", "H-nan"])
def test_a_reply_that_is_not_a_valid_clipped_contribution_is_refused(kind):
    """Adaptive clipping (the default): ``H`` must be exactly one-hot (a split or negative bin keeps norm <= 1 and is still refused)."""
    overrides = {**BASE, "private": True, "noise-multiplier": 1.0, "target-epsilon": 50.0, "noise-seed": 0, "num-server-rounds": 1,
                 "sample-rate": 1.0}

    def tamper(node, message, reply):
        if node != 2:
            return reply
        record = reply.content.array_records["contribution"]
        vector, H = record["contribution"].numpy(), record["H"].numpy().copy()
        if kind == "norm":
            vector = vector * 100
        elif kind == "nan":
            vector = vector.copy()
            vector[0] = float("nan")
        elif kind == "H-split":
            H[:] = 0.0
            H[0] = H[-1] = 0.5
        elif kind == "H-negative":
            H[:] = 0.0
            H[0] = -1.0
        elif kind == "H-nan":
            H[0] = float("nan")
        arrays = {"contribution": Array(vector)} if kind == "H-missing" else {"contribution": Array(vector), "H": Array(H)}
        content = RecordDict({"contribution": ArrayRecord(arrays)})
        if kind == "extra":
            content["loss"] = MetricRecord({"loss": 0.3})
        return Message(content, reply_to=message)

    grid = FakeGrid(make_client_app(overrides), USERS, tamper=tamper)
    billboard = NetworkBillboard(parse_run_config(overrides))
    result = billboard.run(grid)
    assert [(r.round, r.node_id) for r in result.refusals] == [(1, 2)]
    assert result.rounds_completed == 1 and billboard.counted[1] == USERS - 1
    if kind in ("H-split", "H-negative"):
        assert "must be one-hot" in result.refusals[0].reason


def test_server_app_runs_the_network_task_named_in_the_run_config():
    overrides = {**BASE, "num-server-rounds": 2, "personalize-at-end": True}
    grid = FakeGrid(make_client_app(overrides), USERS)
    make_server_app(overrides)(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    types = [m.metadata.message_type for m in grid.sent]
    assert set(types) == {"train.nn", "query.nn_personalize"} and types.count("query.nn_personalize") == USERS
    assert all(PERSONAL_STATE in c.state.array_records for c in grid.contexts.values())


def _state_dirs(root):
    return {node: {"state-dir": str(root / f"node-{node}")} for node in range(1, USERS + 1)}


@pytest.mark.parametrize("private", [False, True], ids=["non-private", "private"])
def test_a_killed_server_and_restarted_nodes_resume_the_network_run(tmp_path, private):
    """Server killed before round 3's messages, every node restarted (new contexts): the run goes on from its
    checkpoint and the nodes from their state-dir. Non-private: the same shared and personal state as an
    uninterrupted run; private: the same ledger (the noise after a restart is fresh, so not the same state)."""
    base = {**BASE, "num-server-rounds": 4}
    if private:
        base.update({"private": True, "noise-multiplier": 1.5, "target-epsilon": 50.0, "noise-seed": 5, "nn-clip": 1e-3})
    full, full_grid = _flower(base)

    crashed = {**base, "checkpoint-dir": str(tmp_path / "server")}
    billboard = NetworkBillboard(parse_run_config(crashed))
    collect = billboard._collect

    def killed_in_round_3(grid, nodes, phase, shared, round_number):
        if round_number == 3:
            raise KeyboardInterrupt("server killed")
        return collect(grid, nodes, phase, shared, round_number)

    billboard._collect = killed_in_round_3
    with pytest.raises(KeyboardInterrupt):
        billboard.run(FakeGrid(make_client_app(crashed), USERS, node_configs=_state_dirs(tmp_path)))
    restarted = FakeGrid(make_client_app(crashed), USERS, node_configs=_state_dirs(tmp_path))
    resumed = NetworkBillboard(parse_run_config(crashed)).run(restarted)

    assert resumed.rounds_completed == 4 and [m.metadata.group_id for m in restarted.sent] == \
        ["3"] * len(full.sampled[3]) + ["4"] * len(full.sampled[4])
    assert resumed.sampled == {r: s for r, s in full.sampled.items() if r >= 3}
    if private:  # adaptive clipping: round 3 goes on with the bound learnt in round 2, kept in the checkpoint
        assert _strip(resumed.ledger) == _strip(full.ledger)
        assert [e.release_id for e in resumed.ledger.events] == ["round-1", "round-2", "round-3", "round-4"]
        assert list(resumed.clip_bounds) == [3, 4] and resumed.clip_bounds[3] == full.clip_bounds[3] >= 16e-3
        return
    for key, value in full.shared.items():
        assert torch.allclose(resumed.shared[key], value, atol=1e-12, rtol=0), key
    node = full.sampled[4][0]
    for key in ("w", "b"):
        assert (restarted.contexts[node].state.array_records[PERSONAL_STATE][key].numpy()
                == full_grid.contexts[node].state.array_records[PERSONAL_STATE][key].numpy()).all()


def test_a_restarted_node_without_its_state_dir_would_diverge():
    """The resume test above is not vacuous: nodes that lose w_i, b_i change the next round's shared state."""
    kept, _ = _flower({**BASE, "num-server-rounds": 2, "sample-rate": 1.0})
    billboard = NetworkBillboard(parse_run_config({**BASE, "num-server-rounds": 2, "sample-rate": 1.0}))
    grid = FakeGrid(make_client_app(BASE), USERS)
    collect = billboard._collect

    def forget_in_round_2(grid_, nodes, phase, shared, round_number):
        if round_number == 2:
            for context in grid.contexts.values():
                del context.state.array_records[PERSONAL_STATE]
        return collect(grid_, nodes, phase, shared, round_number)

    billboard._collect = forget_in_round_2
    forgot = billboard.run(grid)
    assert any(not torch.allclose(forgot.shared[k], kept.shared[k], atol=1e-6) for k in kept.shared)


def test_a_personal_state_file_of_other_shapes_is_not_used(tmp_path):
    from fedlrs.client.state import save_arrays
    from fedlrs.client.network import PERSONAL_STATE_FILE

    node_configs = {1: {"state-dir": str(tmp_path)}}
    save_arrays(tmp_path / PERSONAL_STATE_FILE, {"w": torch.ones(1, 7).numpy(), "b": torch.ones(1, 3).numpy()})
    grid = FakeGrid(make_client_app(BASE), USERS, node_configs=node_configs)
    result = NetworkBillboard(parse_run_config({**BASE, "num-server-rounds": 1, "sample-rate": 1.0})).run(grid)
    assert result.rounds_completed == 1 and not result.refusals
    state = grid.contexts[1].state.array_records[PERSONAL_STATE]
    assert state["w"].shape == (1, 2)  # nn-rank 2: a fresh state, now written over the stale file
    from fedlrs.client.state import read_arrays
    assert read_arrays(tmp_path / PERSONAL_STATE_FILE)["w"].shape == (1, 2)


def _masked_stage(message):
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

    records = message.content.config_records
    return RECORD_KEY_CONFIGS in records and records[RECORD_KEY_CONFIGS][Key.STAGE] == Stage.COLLECT_MASKED_VECTORS


def test_secure_network_run_hides_every_contribution_and_matches_the_clear_run(monkeypatch, tmp_path):
    """SecAgg+ (server noise) on the network task, one node silent at round 2's masked-vector stage: the run
    completes, no reply the server pulls holds any device's vector in any clear form, and the shared state is
    the clear run's (same dropout, same noise seed) up to the wire format's quantization; same ledger."""
    import fedlrs.client.network as client_network
    from federation.test_secure_aggregation import RecordingGrid, _close, _forms, _payloads
    from fedlrs.protocol.wire import wire_parts

    base = {**BASE, "private": True, "noise-multiplier": 1.0, "target-epsilon": 50.0, "noise-seed": 7, "round-timeout": 0.3,
            "clip-quantile": 0.0}
    drop = _flower(base)[0].sampled[2][0]
    vectors = []
    inner = client_network.secure_contribution_nn

    def recorded(*args):
        parts = inner(*args)
        vectors.append(parts)
        return parts

    monkeypatch.setattr(client_network, "secure_contribution_nn", recorded)

    def silent(node, message, reply):
        return None if node == drop and message.metadata.group_id == "2" and _masked_stage(message) else reply

    secure_overrides = {**base, "secure-aggregation": "server-noise", "checkpoint-dir": str(tmp_path)}
    grid = RecordingGrid(make_client_app(secure_overrides), USERS, tamper=silent)
    billboard = NetworkBillboard(parse_run_config(secure_overrides))
    secure = billboard.run(grid)
    assert secure.rounds_completed == 3 and (2, drop) in secure.dropped and not secure.refusals
    assert [len(r.counted) for r in billboard.secure.rounds] == [len(secure.sampled[1]), len(secure.sampled[2]) - 1,
                                                                 len(secure.sampled[3])]
    assert len(vectors) == sum(len(s) for s in secure.sampled.values())  # every sampled device made one
    spec = wire_parts(parse_run_config(secure_overrides), "round")
    forms, start = [], 0
    for outcome, round_number in zip(billboard.secure.rounds, sorted(secure.sampled)):
        for parts in vectors[start:start + len(secure.sampled[round_number])]:
            forms += _forms(parts, spec, outcome.bits)
        start += len(secure.sampled[round_number])
    assert len(forms) == 4 * len(vectors) and _close(forms[0], vectors[0]["contribution"].double().numpy())
    assert len(grid.received) == 4 * sum(len(s) for s in secure.sampled.values()) - 2  # the silent node: no masked vector, no unmask
    for reply in grid.received:
        assert not any(_close(p, f) for p in _payloads(reply) for f in forms)

    def silent_in_the_clear(node, message, reply):
        return None if node == drop and message.metadata.group_id == "2" else reply

    clear, _ = _flower(base, tamper=silent_in_the_clear)
    assert _strip(secure.ledger) == [{**e, "note": secure.ledger.events[0].note} for e in _strip(clear.ledger)]
    assert secure.ledger.events[0].note.startswith("secure aggregation (SecAgg+)")
    for key, value in clear.shared.items():
        assert torch.allclose(secure.shared[key], value, atol=1e-5, rtol=0), key
    audit = audit_report(tmp_path / "privacy_report.json", ledger_path=tmp_path / "ledger.jsonl")
    assert audit.ok, audit.reasons


def test_secure_network_device_refuses_a_shared_state_of_other_shapes():
    from flwr.common import FitIns, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    from fedlrs.client.secure_aggregation import secure_train
    from fedlrs.protocol.wire import SecureAggregationError, WireSettings

    overrides = {**BASE, "secure-aggregation": "server-noise"}
    config = parse_run_config(overrides)
    settings = WireSettings("round", 1, 20, 0)
    fitins = FitIns(ndarrays_to_parameters([torch.zeros(3, 3).numpy()]), settings.to_config())
    message = Message(compat.fitins_to_recorddict(fitins, keep_input=True), dst_node_id=1, message_type="train", group_id="1")
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": USERS}, state=RecordDict(),
                      run_config={})
    with pytest.raises(SecureAggregationError, match="the shared state must be"):
        secure_train(message, context, config)
    assert PERSONAL_STATE not in context.state.array_records


@pytest.mark.parametrize("key,value,rule", [
    ("task", "nn-cifar", "must be one of"), ("nn-clip", 0.0, "must be a finite number > 0"),
    ("num-server-rounds", 0, "must be an integer >= 1"), ("clip-quantile", 1.5, "must be 0 (fixed clip bounds) or in (0, 1)"),
])
def test_network_knobs_are_checked_in_kebab_case(key, value, rule):
    with pytest.raises(ConfigError) as error:
        parse_run_config({**BASE, key: value})
    assert f"{key} == {value!r}" in str(error.value) and rule in str(error.value)


@pytest.mark.parametrize("secure", ["server-noise", "distributed-noise"])
def test_adaptive_clipping_with_secure_aggregation_is_refused(secure):
    """SecAgg+ sums one part at a fixed bound: a private run asks for clip-quantile 0 (the default 0.5 is refused, clearly)."""
    with pytest.raises(ConfigError, match="SecAgg\\+ runs with a fixed clip bound only; set clip-quantile = 0"):
        parse_run_config({**BASE, "private": True, "secure-aggregation": secure})
    assert parse_run_config({**BASE, "private": True, "secure-aggregation": secure, "clip-quantile": 0.0}).clip_quantile == 0
    assert parse_run_config({**BASE, "secure-aggregation": "server-noise"}).clip_quantile == 0.5  # not private: nothing adaptive


def test_a_federation_of_the_wrong_size_is_refused():
    from fedlrs.client.data import DataError

    grid = FakeGrid(make_client_app(BASE), USERS - 1)
    with pytest.raises(DataError, match="num-partitions == 39, must be the 40 users"):
        grid.client_app(Message(RecordDict(), dst_node_id=1, message_type="train.nn", group_id="1"), grid.contexts[1])


@pytest.mark.slow
@pytest.mark.parametrize("secure", ["off", "distributed-noise"])
def test_runs_in_the_flower_simulation(tmp_path, secure):
    """``flwr.simulation.run_simulation`` (Ray backend), one SuperNode per user of the quick task, private;
    in the clear and under SecAgg+ with the devices' discrete Gaussian shares."""
    from flwr.simulation import run_simulation

    overrides = {**BASE, "num-server-rounds": 2, "private": True, "noise-multiplier": 1.5, "target-epsilon": 20.0,
                 "checkpoint-dir": str(tmp_path), "personalize-at-end": True, "secure-aggregation": secure,
                 "round-timeout": 120.0, "clip-quantile": 0.5 if secure == "off" else 0.0}
    run_simulation(server_app=make_server_app(overrides), client_app=make_client_app(overrides), num_supernodes=USERS,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2, "include_dashboard": False}})
    facts = json.loads((tmp_path / "run.json").read_text())["run"]
    assert facts["rounds_completed"] == 2 and facts["refused_replies"] == 0 and facts["missing_replies"] == 0
    assert [e.release_id for e in Ledger.load(tmp_path / "ledger.jsonl").events] == ["round-1", "round-2"]
    audit = audit_report(tmp_path / "privacy_report.json", ledger_path=tmp_path / "ledger.jsonl")
    assert audit.ok, audit.reasons
    if secure != "off":
        releases = json.loads((tmp_path / "secure_aggregation.json").read_text())["releases"]
        assert [len(r["counted"]) for r in releases] == [len(r["sampled"]) for r in releases] and releases[0]["counted"]


def test_a_round_without_any_reply_fails_before_its_release(tmp_path):
    """Issue 17, row 10, for the network billboard: no noise is published for a round nobody answered."""
    from fedlrs.server.validation import TooFewRepliesError

    overrides = {**BASE, "private": True, "noise-multiplier": 1.0, "target-epsilon": 50.0, "noise-seed": 0,
                 "round-timeout": 0.2, "checkpoint-dir": str(tmp_path)}

    def silent_in_round_2(node, message, reply):
        return None if message.metadata.group_id == "2" else reply

    with pytest.raises(TooFewRepliesError, match=r"round 2: 0 of \d+ asked devices replied"):
        _flower(overrides, tamper=silent_in_round_2)
    assert [e.release_id for e in Ledger.load(tmp_path / "ledger.jsonl").events] == ["round-1"]


def test_an_adaptive_round_without_its_bound_is_refused_on_the_device():
    """With adaptive clipping the device clips to the round's bound from the server, never to a guess."""
    from flwr.app import ConfigRecord

    from fedlrs.client.network import state_to_record, train_nn
    from fedlrs.nn.federated import initial_state
    from fedlrs.nn.run_config import network_setup

    config = parse_run_config({**BASE, "private": True, "noise-multiplier": 1.0})
    _, method, net = network_setup(config)
    shared = initial_state(method, net, torch.Generator().manual_seed(0))
    context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": USERS}, state=RecordDict(), run_config={})
    content = RecordDict({"shared": state_to_record(shared), "round-config": ConfigRecord({"round": 1})})
    message = Message(content, dst_node_id=1, message_type="train.nn", group_id="1")
    with pytest.raises(ValueError, match="adaptive clipping needs the round's bound"):
        train_nn(message, context, config)
    content["round-config"] = ConfigRecord({"round": 1, "clip-bound": 0.25})
    reply = train_nn(Message(content, dst_node_id=1, message_type="train.nn", group_id="1"), context, config)
    vector = reply.content.array_records["contribution"]["contribution"].numpy()
    assert 0.25 * (1 - 1e-9) <= float((vector ** 2).sum()) ** 0.5 <= 0.25 * (1 + 1e-9)  # clipped: the norm was above 0.25
