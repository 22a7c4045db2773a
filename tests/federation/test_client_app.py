"""The ClientApp called directly with a Message: what it sends, what it keeps."""

import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedlrs.client.app import make_client_app
from fedlrs.client.state import STATE_FILE, load_state
from fedlrs.core import random_orthonormal
from fedlrs.federation_config import parse_run_config


def _context(node=1, users=4, state_dir=None):
    node_config = {"partition-id": node - 1, "num-partitions": users}
    if state_dir is not None:
        node_config["state-dir"] = str(state_dir)
    return Context(run_id=1, node_id=node, node_config=node_config, state=RecordDict(), run_config={})


def _message(message_type, U=None, round_number=1):
    content = RecordDict({"round-config": ConfigRecord({"round": round_number})})
    if U is not None:
        content["billboard"] = ArrayRecord({"U": Array(U.numpy())})
    return Message(content, dst_node_id=1, message_type=message_type, group_id=str(round_number))


@pytest.fixture
def U(small):
    return random_orthonormal(small["dim"], small["rank"], generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("mode,names", [("ls", {"A", "c"}), ("gd", {"G"})])
def test_private_reply_is_exactly_the_clipped_contribution(small, U, mode, names):
    overrides = {**small, "mode": mode, "private": True, "clip-a": 0.5, "clip-c": 0.25, "clip-g": 0.1, "clip-quantile": 0.0}
    reply = make_client_app(overrides)(_message("train", U), _context())
    content = reply.content
    assert set(content.keys()) == {"contribution"}
    assert not content.metric_records and not content.config_records
    record = content.array_records["contribution"]
    assert set(record.keys()) == names
    bounds = {"A": 0.5, "c": 0.25, "G": 0.1}
    d, r = small["dim"], small["rank"]
    shapes = {"A": (d * r, d * r), "c": (d * r,), "G": (d, r)}
    for name in names:
        value = record[name].numpy()
        assert value.shape == shapes[name] and value.dtype == np.float64
        assert np.linalg.norm(value) <= bounds[name] * (1 + 1e-12)
        assert math.isclose(np.linalg.norm(value), bounds[name], rel_tol=1e-9)  # these bounds do bind


def test_private_ls_reply_is_unit_free(small, U):
    """Private "ls" with clip-quantile > 0: A_i / ||A_i||_F (norm exactly 1) and c_i / ||A_i||_F clipped to 1."""
    reply = make_client_app({**small, "mode": "ls", "private": True})(_message("train", U), _context())
    record = reply.content.array_records["contribution"]
    A, c = record["A"].numpy(), record["c"].numpy()
    assert math.isclose(np.linalg.norm(A), 1.0, rel_tol=1e-12) and np.allclose(A, A.T) and np.linalg.norm(c) <= 1 + 1e-12


def test_adaptive_clip_phase_and_round_reply(small, U):
    """clip-quantile > 0 in mode gd: train.clip answers one one-hot bin of the grid around the server's previous bound;
    train answers G within the server's bound and P (trace <= 1)."""
    overrides = {**small, "mode": "gd", "private": True}
    app = make_client_app(overrides)
    bins = []
    for center in (1.0, 1e-6, 1e6):  # norms far below the grid fall in its first bin, far above in its last
        clip_message = _message("train.clip", U)
        clip_message.content["round-config"]["clip-bound"] = center
        histogram = app(clip_message, _context()).content.array_records["contribution"]["H"].numpy()
        assert histogram.shape == (9,) and sorted(histogram.tolist())[-2:] == [0.0, 1.0] and histogram.sum() == 1.0
        bins.append(int(histogram.argmax()))
    assert bins[1:] == [8, 0]
    with pytest.raises(Exception):  # a clip phase without the grid's center is an error on the device
        app(_message("train.clip", U), _context())
    message = _message("train", U)
    message.content["round-config"]["clip-bound"] = 1e-4
    record = app(message, _context()).content.array_records["contribution"]
    G, P = record["G"].numpy(), record["P"].numpy()
    assert G.shape == (small["dim"], small["rank"]) and math.isclose(np.linalg.norm(G), 1e-4, rel_tol=1e-9)  # the bound binds
    assert P.shape == (small["rank"],) * 2 and np.allclose(P, P.T) and 0 < np.trace(P) <= 1 + 1e-12
    with pytest.raises(Exception):  # a round without the server's bound is an error on the device, not an unclipped reply
        app(_message("train", U), _context())


def test_non_private_reply_is_the_unclipped_contribution(small, U):
    from fedlrs.client.data import load_user_data
    from fedlrs.core import ls_system, solve_local, sufficient_statistics

    config = parse_run_config(small)
    reply = make_client_app(small)(_message("train", U), _context(node=3))
    stats = sufficient_statistics(load_user_data(config, {"partition-id": 2, "num-partitions": 4}))
    fit = solve_local(U, stats, sparsity=1, ridge_w=config.ridge_w, ridge_b=config.ridge_b, refine_steps=2, starts=2)
    A, c = ls_system(stats, fit.w, fit.b)
    record = reply.content.array_records["contribution"]
    np.testing.assert_allclose(record["A"].numpy(), A.numpy())
    np.testing.assert_allclose(record["c"].numpy(), c.numpy())


def test_state_is_kept_in_context_and_state_dir(small, U, tmp_path):
    client = make_client_app(small)
    context = _context(state_dir=tmp_path)
    client(_message("train", U, round_number=2), context)
    state = load_state(context)
    assert state.round == 2 and state.w.shape == (2,) and state.b.shape == (10,)
    assert (np.abs(state.b) > 0).sum() <= 1
    assert (tmp_path / STATE_FILE).is_file()
    restarted = _context(state_dir=tmp_path)  # a restarted SuperNode: empty context.state, same state-dir
    again = load_state(restarted)
    np.testing.assert_array_equal(again.w, state.w)
    np.testing.assert_array_equal(again.b, state.b)


def test_moments_reply_is_clipped(small):
    reply = make_client_app({**small, "private": True, "clip-moments": 1.0})(_message("train.moments"), _context())
    M = reply.content.array_records["contribution"]["M"].numpy()
    assert M.shape == (10, 10) and np.linalg.norm(M) <= 1.0 + 1e-12


def test_personalize_sends_nothing_and_keeps_the_fit(small, U, tmp_path):
    context = _context(state_dir=tmp_path)
    reply = make_client_app(small)(_message("query.personalize", U, round_number=5), context)
    assert len(reply.content.keys()) == 0
    assert load_state(context).round == 5


def test_evaluate_keeps_the_metric_on_the_device(small, U):
    client = make_client_app(small)
    context = _context()
    client(_message("train", U), context)
    reply = client(_message("evaluate", U), context)
    assert len(reply.content.keys()) == 0
    assert "mse" in context.state.metric_records["fedlrs.local-metrics"]


def test_deployment_data_from_a_file(small, U, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "user.npz"
    np.savez(path, X=rng.normal(size=(15, 10)), y=rng.normal(size=15))
    context = Context(run_id=1, node_id=7, node_config={"data-path": str(path)}, state=RecordDict(),
                      run_config={})
    reply = make_client_app({**small, "dataset": "node"})(_message("train", U), context)
    assert reply.content.array_records["contribution"]["A"].numpy().shape == (20, 20)
