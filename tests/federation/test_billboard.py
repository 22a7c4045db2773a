"""The ServerApp's billboard driven by a fake Grid: fidelity with the engine, privacy, faults, resume."""

import json

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, MetricRecord, Message, RecordDict

from fedlrs.client.app import make_client_app
from fedlrs.federation_config import parse_run_config
from fedlrs.privacy import Ledger, audit_report
from fedlrs.server.app import make_server_app
from fedlrs.server.billboard import Billboard
from fedlrs.simulations.engine import run_engine
from fedlrs.data.synthetic import make_lrs_data

from .fakes import FakeGrid

USERS = 12


def _run(overrides, users=USERS, tamper=None):
    config = parse_run_config(overrides)
    grid = FakeGrid(make_client_app(overrides), users, tamper=tamper)
    return Billboard(config).run(grid), grid


def _engine_U(overrides, users=USERS):
    config = parse_run_config(overrides)
    data = make_lrs_data(users=users, examples=config.data_examples, dim=config.dim, rank=config.rank,
                         sparsity=config.sparsity, noise=config.data_noise, seed=config.data_seed)
    return run_engine(data.train, config.engine_config()).U


@pytest.mark.parametrize("mode,init,q", [("ls", "moments", 1.0), ("ls", "random", 0.5), ("gd", "moments", 0.6), ("gd", "random", 1.0)])
def test_same_U_as_the_engine(small, mode, init, q):
    overrides = {**small, "mode": mode, "init": init, "sample-rate": q, "seed": 3}
    result, _ = _run(overrides)
    assert result.rounds_completed == 3
    assert torch.allclose(result.U, _engine_U(overrides), atol=1e-6, rtol=0)



@pytest.mark.parametrize("window", [1, 5])
def test_a_window_of_messages_in_flight_gives_the_same_U_and_waits_for_no_dropped_node(small, window):
    overrides = {**small, "seed": 3, "round-timeout": 0.3}
    dropped = _corrupt("drop")
    reference, _ = _run(overrides, tamper=dropped)
    result, grid = _run({**overrides, "max-in-flight": window}, tamper=dropped)
    assert result.rounds_completed == 3 and [node for _, node in result.dropped] == [2, 2, 2]
    assert torch.equal(result.U, reference.U)
    train = [m.metadata.dst_node_id for m in grid.sent if m.metadata.message_type == "train"]
    assert sorted(train) == sorted(list(range(1, USERS + 1)) * 3)

def test_server_app_runs_on_a_fake_grid(small):
    from flwr.app import Context

    grid = FakeGrid(make_client_app(small), 5)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
    make_server_app(small)(grid, context)
    types = [m.metadata.message_type for m in grid.sent]
    assert types.count("train.moments") == 5 and types.count("train") == 15


def test_private_run_records_init_and_every_round(small, tmp_path):
    overrides = {**small, "private": True, "sample-rate": 0.5, "target-epsilon": 5.0, "noise-seed": 0,
                 "init-noise-multiplier": 4.0, "checkpoint-dir": str(tmp_path)}
    result, _ = _run(overrides)
    events = result.ledger.events
    assert [e.release_id for e in events] == ["init", "round-1", "round-2", "round-3"]
    assert events[0].sample_rate == 1.0 and events[0].noise_multiplier == 4.0
    assert all(e.sample_rate == 0.5 and e.noise_multiplier == result.noise_multiplier for e in events[1:])
    assert result.ledger.epsilon(delta=1e-5) <= 5.0
    assert [e.to_dict() for e in Ledger.load(tmp_path / "ledger.jsonl").events] == [e.to_dict() for e in events]
    report = json.loads((tmp_path / "privacy_report.json").read_text())
    assert report["epsilon"]["rdp"] <= 5.0 and len(report["events"]) == 4
    assert report["plan"] == {"rounds": 3, "noise_multiplier": result.noise_multiplier}
    assert report["config"]["run"] == {"rounds_completed": 3, "stopped": "rounds done", "refused_replies": 0,
                                       "missing_replies": 0}
    assert (tmp_path / "privacy_report.md").is_file() and (tmp_path / "epsilon.png").is_file()
    assert json.loads((tmp_path / "run.json").read_text())["run"]["rounds_completed"] == 3
    audit = audit_report(tmp_path / "privacy_report.json", ledger_path=tmp_path / "ledger.jsonl")
    assert audit.ok, audit.reasons


def test_fedlrs_privacy_audit_passes_on_the_report_of_a_flower_run(small, tmp_path):
    from typer.testing import CliRunner

    from fedlrs.privacy.cli import privacy_app

    overrides = {**small, "private": True, "sample-rate": 0.5, "init-noise-multiplier": 0.0, "noise-seed": 0,
                 "checkpoint-dir": str(tmp_path / "ckpt"), "report-dir": str(tmp_path / "report")}
    _run(overrides)
    done = CliRunner().invoke(privacy_app, ["audit", str(tmp_path / "report" / "privacy_report.json"),
                                            "--ledger", str(tmp_path / "ckpt" / "ledger.jsonl")])
    assert done.exit_code == 0 and "audit passed" in done.output, done.output


def _strip(ledger):
    return [{k: v for k, v in e.to_dict().items() if k != "time"} for e in ledger.events]


@pytest.mark.parametrize("mode,init,q,z_init", [("ls", "moments", 0.5, 0.0), ("gd", "moments", 0.6, 3.0),
                                                ("ls", "random", 1.0, 4.0), ("gd", "moments", 0.7, 0.0), ("gd", "random", 1.0, 0.0)])
def test_private_flower_run_and_private_engine_run_agree(small, mode, init, q, z_init):
    """Same seed, config and noise seed: the same ledger (time aside) and the same U (the noise draws line up)."""
    overrides = {**small, "mode": mode, "init": init, "sample-rate": q, "seed": 5, "private": True,
                 "target-epsilon": 3.0, "init-noise-multiplier": z_init, "noise-seed": 7, "num-server-rounds": 4}
    flower, _ = _run(overrides)
    config = parse_run_config(overrides)
    data = make_lrs_data(users=USERS, examples=config.data_examples, dim=config.dim, rank=config.rank,
                         sparsity=config.sparsity, noise=config.data_noise, seed=config.data_seed)
    engine = run_engine(data.train, config.engine_config())
    assert _strip(flower.ledger) == _strip(engine.ledger)
    assert len(flower.ledger) == 4 + (init == "moments") + 4 * config.engine_config().unit_free  # a clip histogram per round
    if z_init == 0.0 and init == "moments":  # joint calibration: the init and the rounds share one z
        assert flower.ledger.events[0].noise_multiplier == flower.noise_multiplier == engine.noise_multiplier
    assert torch.allclose(flower.U, engine.U, atol=1e-6, rtol=0)


def test_budget_stops_the_run(small):
    overrides = {**small, "private": True, "noise-multiplier": 2.0, "target-epsilon": 3.0, "sample-rate": 0.2,
                 "num-server-rounds": 50, "noise-seed": 0}
    result, _ = _run(overrides)
    assert 0 < result.rounds_completed < 50 and result.stopped.startswith("budget")
    assert result.ledger.epsilon(delta=1e-5) <= 3.0


def _corrupt(kind):
    def tamper(node, message, reply):
        if message.metadata.message_type != "train" or node != 2:
            return reply
        record = reply.content.array_records["contribution"]
        arrays = {name: record[name].numpy().copy() for name in record.keys()}
        content = RecordDict({"contribution": ArrayRecord({n: Array(v) for n, v in arrays.items()})})
        if kind == "nan":
            arrays["A"][0, 0] = np.nan
            content = RecordDict({"contribution": ArrayRecord({n: Array(v) for n, v in arrays.items()})})
        elif kind == "shape":
            content = RecordDict({"contribution": ArrayRecord({"A": Array(arrays["A"][:-1]), "c": Array(arrays["c"])})})
        elif kind == "extra-key":
            arrays["loss"] = np.zeros(1)
            content = RecordDict({"contribution": ArrayRecord({n: Array(v) for n, v in arrays.items()})})
        elif kind == "extra-record":
            content["metrics"] = MetricRecord({"num-examples": 12})
        elif kind == "unclipped":
            arrays["c"] = arrays["c"] * 1e6
            content = RecordDict({"contribution": ArrayRecord({n: Array(v) for n, v in arrays.items()})})
        elif kind == "dtype":
            content = RecordDict({"contribution": ArrayRecord({n: Array(v.astype(np.float32)) for n, v in arrays.items()})})
        elif kind == "drop":
            return None
        elif kind == "unavailable":  # what the SuperLink answers for a node that stopped sending heartbeats
            from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

            return create_message_error_unavailable_res_message(message.metadata, "node_unavail")
        return Message(content, reply_to=message)

    return tamper


@pytest.mark.parametrize("kind", ["nan", "shape", "extra-key", "extra-record", "unclipped", "dtype", "drop", "unavailable"])
def test_a_bad_reply_is_refused_without_harming_the_round(small, kind):
    overrides = {**small, "private": True, "noise-multiplier": 1.0, "noise-seed": 0, "clip-c": 5.0, "target-epsilon": 100.0,
                 "round-timeout": 0.3}
    result, _ = _run(overrides, tamper=_corrupt(kind))
    assert result.rounds_completed == 3
    assert torch.isfinite(result.U).all()
    if kind in ("drop", "unavailable"):  # a node gone, not a bad reply: dropped, nothing refused
        assert [node for _, node in result.dropped] == [2, 2, 2] and not result.refusals
    else:
        assert [(r.round, r.node_id) for r in result.refusals] == [(1, 2), (2, 2), (3, 2)]
    # the other nodes' replies were counted: the same U as a run where node 2 is simply absent from the sums
    assert len(result.ledger.events) == 4


def test_resume_after_a_crash_gives_the_same_U_and_ledger(small, tmp_path):
    base = {**small, "private": True, "noise-multiplier": 2.0, "noise-seed": 0, "sample-rate": 0.5, "target-epsilon": 100.0,
            "num-server-rounds": 4}
    full, _ = _run({**base, "checkpoint-dir": str(tmp_path / "full")})

    crashed = {**base, "checkpoint-dir": str(tmp_path / "crash")}
    calls = {"n": 0}

    def crash_in_round_3(node, message, reply):
        if message.metadata.message_type == "train" and message.metadata.group_id == "3":
            raise KeyboardInterrupt("server killed")
        return reply

    with pytest.raises(KeyboardInterrupt):
        _run(crashed, tamper=crash_in_round_3)
    assert len(Ledger.load(tmp_path / "crash" / "ledger.jsonl")) == 3  # init, round 1, round 2
    resumed, grid = _run(crashed)
    assert resumed.rounds_completed == 4
    assert "train.moments" not in [m.metadata.message_type for m in grid.sent]
    assert _strip(resumed.ledger) == _strip(full.ledger)
    assert resumed.sampled == {r: s for r, s in full.sampled.items() if r >= 3}


def test_a_release_recorded_before_the_crash_is_kept_and_the_retry_is_counted(small, tmp_path):
    base = {**small, "private": True, "noise-multiplier": 2.0, "noise-seed": 0, "target-epsilon": 100.0, "checkpoint-dir": str(tmp_path)}
    config = parse_run_config(base)
    billboard = Billboard(config)
    original = billboard._checkpoint

    def die_before_checkpoint_2(round_number, *args):
        if round_number == 2:
            raise KeyboardInterrupt("killed between the release and the checkpoint")
        return original(round_number, *args)

    billboard._checkpoint = die_before_checkpoint_2
    with pytest.raises(KeyboardInterrupt):
        billboard.run(FakeGrid(make_client_app(base), USERS))
    resumed, _ = _run(base)
    assert [e.release_id for e in resumed.ledger.events] == ["init", "round-1", "round-2", "round-2-retry-1", "round-3"]


def test_a_checkpoint_of_other_settings_is_refused(small, tmp_path):
    from fedlrs.server.checkpoint import CheckpointError

    _run({**small, "checkpoint-dir": str(tmp_path)})
    with pytest.raises(CheckpointError, match="rank"):
        _run({**small, "rank": 3, "checkpoint-dir": str(tmp_path)})


def test_a_version_1_checkpoint_of_U_alone_still_loads(tmp_path):
    from fedlrs.server.checkpoint import CHECKPOINT_FILE, FORMAT, CheckpointError, load_checkpoint

    U = torch.linalg.qr(torch.randn(6, 2, dtype=torch.float64))[0]
    payload = {"format": FORMAT, "version": 1, "round": 2, "U": U, "generator_state": torch.Generator().get_state(),
               "noise_multiplier": 1.5, "ledger_events": 3, "fingerprint": {"rank": 2}}
    torch.save(payload, tmp_path / CHECKPOINT_FILE)
    checkpoint = load_checkpoint(tmp_path, {"rank": 2})
    assert checkpoint.round == 2 and list(checkpoint.shared) == ["U"] and torch.equal(checkpoint.shared["U"], U)
    torch.save({**payload, "version": 7}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="version 7"):
        load_checkpoint(tmp_path, {"rank": 2})


def _silence(nodes, phase):
    """A tamper under which ``nodes`` never answer the messages of ``phase`` ("train.moments" or "train")."""
    def tamper(node, message, reply):
        return None if node in nodes and message.metadata.message_type == phase else reply
    return tamper


@pytest.mark.parametrize("phase", ["train.moments", "train"])
def test_a_phase_without_any_reply_fails_before_its_release(small, tmp_path, phase):
    """Issue 17, row 10: a private init (or round) in which every reply failed stops the run; nothing is recorded."""
    from fedlrs.server.validation import TooFewRepliesError

    overrides = {**small, "private": True, "noise-multiplier": 1.0, "noise-seed": 0, "target-epsilon": 100.0,
                 "round-timeout": 0.2, "checkpoint-dir": str(tmp_path)}
    with pytest.raises(TooFewRepliesError, match=r"0 of 12 asked devices replied.*nothing was released"):
        _run(overrides, tamper=_silence(set(range(1, USERS + 1)), phase))
    recorded = [e.release_id for e in Ledger.load(tmp_path / "ledger.jsonl").events]
    assert recorded == ([] if phase == "train.moments" else ["init"])
    if phase == "train":  # the devices are back: the run resumes and completes
        result, _ = _run(overrides)
        assert result.rounds_completed == 3 and len(result.ledger) == 4


def test_fewer_replies_than_min_nodes_fail_the_round(small):
    from fedlrs.server.validation import TooFewRepliesError

    overrides = {**small, "round-timeout": 0.2, "min-nodes": 10}
    with pytest.raises(TooFewRepliesError, match=r"round 1: 9 of 12 .* fewer than 10 \(min-nodes == 10\)"):
        _run(overrides, tamper=_silence({1, 2, 3}, "train"))
    result, _ = _run({**overrides, "min-nodes": 9}, tamper=_silence({1, 2, 3}, "train"))
    assert result.rounds_completed == 3


def test_adaptive_clipping_flower_run_sends_a_clip_phase_and_clips_to_its_bound(small, tmp_path):
    """Mode gd, clip-quantile 0.5: each round a train.clip exchange, then replies within the bound the server sent; audit passes."""
    overrides = {**small, "mode": "gd", "private": True, "target-epsilon": 4.0, "noise-seed": 1, "seed": 2,
                 "checkpoint-dir": str(tmp_path / "ckpt"), "report-dir": str(tmp_path / "report")}
    result, grid = _run(overrides)
    types = [m.metadata.message_type for m in grid.sent]
    assert types.count("train.clip") == 3 * USERS and types.count("train") == 3 * USERS
    kinds = [e.kind for e in result.ledger.events]
    assert kinds == ["init", "clip", "round", "clip", "round", "clip", "round"]
    bounds = [m.content.config_records["round-config"]["clip-bound"] for m in grid.sent if m.metadata.message_type == "train"]
    assert len(set(bounds)) >= 1 and all(b > 0 for b in bounds)
    audit = audit_report(tmp_path / "report" / "privacy_report.json", ledger_path=tmp_path / "ckpt" / "ledger.jsonl")
    assert audit.ok, audit.reasons
