"""The recsys task through Flower (fedlrs.server.recsys, fedlrs.client.recsys) on a fake Grid: the same P and user fits as the engine on a small slice."""

import json
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, RecordDict

from fedlrs.privacy import Ledger, compute_epsilon
from fedlrs.protocol.messages import CONTRIBUTION
from fedlrs.data.ratings import load_ratings
from fedlrs.client.recsys import STATE, make_recsys_client_app
from fedlrs.recsys.flower_task import RecsysFlowerTask, recsys_task
from fedlrs.server.recsys import make_recsys_server_app, run_recsys
from fedlrs.recsys.model import RecsysConfig, fit_recsys
from .fakes import FakeGrid

USERS = 12
REPO = Path(__file__).resolve().parents[2]


def _task(**config):
    return RecsysFlowerTask(data="insteval", max_users=USERS, config=RecsysConfig(**{"rank": 2, "sparsity": 1, "rounds": 3, **config}))


def test_flower_run_equals_the_engine_run_on_a_small_slice():
    task = _task()
    grid = FakeGrid(make_recsys_client_app(task), USERS)
    flower = run_recsys(grid, task)
    split = load_ratings("insteval", max_users=USERS)
    engine = fit_recsys(split.stats(split.train_full), task.config, rating_range=split.rating_range)
    assert flower.offset == pytest.approx(engine.offset)
    np.testing.assert_allclose(flower.P.numpy(), engine.P.numpy(), atol=1e-9)
    for node, context in grid.contexts.items():  # each device keeps its own fit, the engine's for that user
        state = context.state.array_records[STATE]
        np.testing.assert_allclose(state["w"].numpy()[0], engine.fit.w[node - 1].numpy(), atol=1e-8)
        np.testing.assert_allclose(state["user_bias"].numpy()[0], float(engine.fit.user_bias[node - 1]), atol=1e-8)
    types = [m.metadata.message_type for m in grid.sent]
    assert types.count("train.recsys") == 3 * USERS and types.count("query.recsys_mean") == USERS


def test_private_flower_run_records_every_round_in_the_ledger():
    task = _task(private=True, target_epsilon=4.0, delta=1e-4, rating_cap=10, noise_seed=0, sparsity=0)
    result = run_recsys(FakeGrid(make_recsys_client_app(task), USERS), task)
    assert [e.round for e in result.ledger.events] == [1, 2, 3]
    assert compute_epsilon(result.ledger.events, delta=1e-4).epsilon <= 4.0
    assert result.offset == 3.0 and torch.isfinite(result.P).all()


def test_server_app_runs_the_task_on_a_fake_grid():
    task = _task(rounds=1)
    grid = FakeGrid(make_recsys_client_app(task), USERS)
    make_recsys_server_app(task)(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    assert [m.metadata.message_type for m in grid.sent].count("query.recsys_personalize") == USERS


def test_a_device_outside_the_federation_is_refused():
    task = _task()
    with pytest.raises(Exception, match="partition-id"):
        run_recsys(FakeGrid(make_recsys_client_app(task), USERS + 1), task)


# ---------------------------------------------------------------- through the app entry points (run config task = "recsys")

RUN = {"task": "recsys", "recsys-data": "insteval", "recsys-max-users": USERS, "recsys-rank": 2, "recsys-sparsity": 1, "num-server-rounds": 3,
       "recsys-ridge-w": 2.0, "recsys-ridge-u": 3.0, "seed": 4, "data-seed": 1}


def test_run_config_task_recsys_through_the_apps_equals_the_engine_run():
    from fedlrs.client.app import make_client_app
    from fedlrs.federation_config import parse_run_config
    from fedlrs.server.app import run_task

    config = parse_run_config(RUN)
    task = recsys_task(config)
    assert (task.data, task.seed, task.max_users, task.config.rank, task.config.rounds, task.config.seed, task.config.ridge_u) == ("insteval", 1, USERS, 2, 3, 4, 3.0)
    grid = FakeGrid(make_client_app(RUN), USERS)
    flower = run_task(grid, config)
    split = load_ratings("insteval", seed=1, max_users=USERS)
    engine = fit_recsys(split.stats(split.train_full), task.config, rating_range=split.rating_range)
    np.testing.assert_allclose(flower.P.numpy(), engine.P.numpy(), atol=1e-9)
    for node, context in grid.contexts.items():
        np.testing.assert_allclose(context.state.array_records[STATE]["w"].numpy()[0], engine.fit.w[node - 1].numpy(), atol=1e-8)


def test_the_client_app_called_directly_replies_the_users_contribution():
    from fedlrs.client.app import make_client_app
    from fedlrs.federation_config import parse_run_config
    from fedlrs.recsys.model import contribution_sums, contribution_weights, local_fit
    from fedlrs.server.recsys import _content

    task = recsys_task(parse_run_config(RUN))
    split = load_ratings("insteval", seed=1, max_users=USERS)
    P = torch.randn(split.num_items, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    message = Message(_content(P, 3.1, 1), dst_node_id=5, message_type="train.recsys", group_id="1")
    context = Context(run_id=1, node_id=5, node_config={"partition-id": 4}, state=RecordDict(), run_config=dict(RUN))
    reply = make_client_app(RUN)(message, context)
    stats = split.stats(split.train_full).select(torch.tensor([4]))
    fit = local_fit(P, stats, task.config, 3.1)
    expected = contribution_sums(P, fit, stats, task.config, 3.1, None, contribution_weights(stats, 0, torch.Generator()))
    parts = reply.content.array_records[CONTRIBUTION]
    assert set(parts.keys()) == {"A", "c"}
    for name in ("A", "c"):
        np.testing.assert_allclose(parts[name].numpy(), expected[name].numpy(), atol=1e-12)


def test_a_private_recsys_run_through_the_server_app_writes_an_audited_report(tmp_path):
    from fedlrs.client.app import make_client_app
    from fedlrs.privacy import audit_report
    from fedlrs.server.app import make_server_app

    run = {**RUN, "private": True, "target-epsilon": 4.0, "delta": 1e-4, "recsys-rating-cap": 10, "recsys-sparsity": 0, "noise-seed": 0,
           "report-dir": str(tmp_path)}
    grid = FakeGrid(make_client_app(run), USERS)
    make_server_app(run)(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    assert np.load(tmp_path / "P.npy").shape == (1128, 3)
    assert [e.release_id for e in Ledger.load(tmp_path / "ledger.jsonl").events] == ["round-1", "round-2", "round-3"]
    audit = audit_report(tmp_path / "privacy_report.json", ledger_path=tmp_path / "ledger.jsonl")
    assert audit.ok, audit.reasons


@pytest.mark.parametrize("key, value, message", [
    ("recsys-data", "netflix", "recsys-data == 'netflix', must be one of ['movielens', 'insteval']"),
    ("recsys-protocol", "time", "recsys-protocol == 'time', must be 'random' (or 'time', for movielens only)"),
    ("recsys-rank", -1, "recsys-rank == -1, must be an integer >= 0"),
    ("recsys-mode", "exact", "recsys-mode == 'exact', must be 'ls' or 'gd'"),
    ("recsys-ridge-u", 0.0, "recsys-ridge-u == 0.0, must be a finite number > 0"),
    ("recsys-max-users", -2, "recsys-max-users == -2, must be >= 0"),
    ("sample-rate", 0.5, "sample-rate == 0.5: the Flower recsys task runs every user every round"),
    ("secure-aggregation", "server-noise", "task == 'recsys' runs without SecAgg+"),
    ("recsys-rankk", 2, "unknown run-config key 'recsys-rankk'"),
])
def test_bad_recsys_keys_are_refused_by_name(key, value, message):
    from fedlrs.federation_config import ConfigError, parse_run_config

    with pytest.raises(ConfigError) as error:
        parse_run_config({**RUN, key: value})
    assert message in str(error.value)


def test_recsys_run_config_defaults_are_the_models():
    from dataclasses import fields

    from fedlrs.federation_config import DEFAULTS
    from fedlrs.recsys.flower_task import CONFIG_KEYS

    defaults = {f.name: f.default for f in fields(RecsysConfig)}
    for name, key in CONFIG_KEYS.items():
        if key.startswith("recsys-"):
            assert DEFAULTS[key] == defaults[name], key


def _processes_of(home) -> list[int]:
    """PIDs of the processes whose command line names ``home`` (the local SuperLink ``flwr run .`` leaves running)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(home) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_flwr_run_of_task_recsys_publishes_the_engines_P(tmp_path):
    """``flwr run . --run-config 'task="recsys" ...'`` (the local SuperLink's simulation, 4 SuperNodes, node i = user i):
    the run completes and the P in its report-dir is the in-process engine's."""
    nodes, home = 4, tmp_path / "flwr-home"
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    run_config = (f"task='recsys' recsys-data='insteval' recsys-max-users={nodes} recsys-rank=2 recsys-sparsity=1 num-server-rounds=2 "
                  f"report-dir='{tmp_path / 'report'}'")
    try:
        done = subprocess.run(["flwr", "run", ".", "--stream", "--run-config", run_config, "--federation-config", f"num-supernodes={nodes}"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        listed = subprocess.run(["flwr", "list", "--format", "json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert [run["status"] for run in json.loads(listed.stdout)["runs"]] == ["finished:completed"]
    finally:
        for pid in _processes_of(home):  # stop the local SuperLink of this FLWR_HOME, by PID
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    split = load_ratings("insteval", max_users=nodes)
    engine = fit_recsys(split.stats(split.train_full), _task(rounds=2).config, rating_range=split.rating_range)
    np.testing.assert_allclose(np.load(tmp_path / "report" / "P.npy"), engine.P.numpy(), atol=1e-9)


# ---------------------------------------------------------------- lost and refused replies (the billboards' rules, GridBoard)

def _silent(node_id, types=("query.recsys_mean", "train.recsys")):
    """A tamper under which ``node_id`` never answers the messages of ``types``."""
    return lambda node, message, reply: None if node == node_id and message.metadata.message_type in types else reply


def test_a_lost_device_is_skipped_and_the_offset_and_rounds_go_on_without_it():
    task = _task()
    result = run_recsys(FakeGrid(make_recsys_client_app(task), USERS, tamper=_silent(3)), task, round_timeout=0.05)
    assert result.dropped == [(1, 3), (2, 3), (3, 3)] and result.rounds_completed == 3 and result.stopped == "rounds done"
    split = load_ratings("insteval", max_users=USERS)
    rows = split.train_full
    others = rows.users != 2  # node 3 is user 2
    assert result.offset == pytest.approx(float(rows.ratings[others].mean()))
    assert torch.isfinite(result.P).all()


def test_too_few_replies_stop_the_run_before_the_release():
    from fedlrs.server.validation import TooFewRepliesError

    task = _task()
    with pytest.raises(TooFewRepliesError, match="query.recsys_mean: 11 of 12"):
        run_recsys(FakeGrid(make_recsys_client_app(task), USERS, tamper=_silent(3)), task, min_nodes=USERS, round_timeout=0.05)
    private = _task(private=True, target_epsilon=4.0, delta=1e-4, rating_cap=10, noise_seed=0, sparsity=0)
    ledger = Ledger()
    with pytest.raises(TooFewRepliesError, match="round 1: 11 of 12"):
        run_recsys(FakeGrid(make_recsys_client_app(private), USERS, tamper=_silent(3)), private, ledger=ledger, min_nodes=USERS,
                   round_timeout=0.05)
    assert len(ledger) == 0  # nothing released for the round


def test_a_reply_above_its_private_bound_is_refused_and_the_rounds_go_on():
    task = _task(private=True, target_epsilon=4.0, delta=1e-4, rating_cap=10, noise_seed=0, sparsity=0)

    def inflate(node, message, reply):
        if node == 5 and message.metadata.message_type == "train.recsys":
            parts = reply.content.array_records[CONTRIBUTION]
            parts["c"] = type(parts["c"])(parts["c"].numpy() * 1e3 + 1.0)
        return reply

    result = run_recsys(FakeGrid(make_recsys_client_app(task), USERS, tamper=inflate), task)
    assert [(r.round, r.node_id) for r in result.refusals] == [(1, 5), (2, 5), (3, 5)]
    assert all("above its clipping bound" in r.reason for r in result.refusals)
    assert [e.release_id for e in result.ledger.events] == ["round-1", "round-2", "round-3"]
