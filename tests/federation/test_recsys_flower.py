"""The recsys task through Flower (fedlrs.server.recsys, fedlrs.client.recsys) on a fake Grid: the same P and user fits as the engine on a small slice."""

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from fedlrs.privacy import compute_epsilon
from fedlrs.recsys.data import load_ratings
from fedlrs.client.recsys import STATE, make_recsys_client_app
from fedlrs.recsys.flower_task import RecsysFlowerTask
from fedlrs.server.recsys import make_recsys_server_app, run_recsys
from fedlrs.recsys.model import RecsysConfig, fit_recsys
from .fakes import FakeGrid

USERS = 12


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
