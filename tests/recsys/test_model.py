"""The matrix-completion round loop (fedlrs.recsys.model): recovery, the baselines it contains, and its private path."""

import math

import numpy as np
import pytest
import torch

from fedlrs.core.sparse import item_contribution_norms, item_statistics
from fedlrs.privacy import audit_report, compute_epsilon
from fedlrs.data.ratings import Ratings
from fedlrs.recsys.model import RecsysConfig, RecsysTask, contribution_weights, fit_recsys

NOISE = 0.3


def _low_rank_ratings(n=300, d=80, r=2, observed=0.35, seed=0):
    """``y_ij = 3 + a_i + c_j + U*_j . w*_i + N(0, 0.3^2)`` on a random 35% of the (user, item) pairs; 80/20 split."""
    rng = np.random.default_rng(seed)
    U, W = rng.normal(size=(d, r)), rng.normal(size=(n, r))
    a, c = rng.normal(scale=0.5, size=n), rng.normal(scale=0.5, size=d)
    users, items = np.nonzero(rng.random((n, d)) < observed)
    y = 3 + a[users] + c[items] + (U[items] * W[users]).sum(1) + rng.normal(scale=NOISE, size=len(users))
    test = rng.random(len(y)) < 0.2
    rows = Ratings(users, items, y)
    return rows.subset(~test), rows.subset(test), n, d


def _fit(train, n, d, **kw):
    return fit_recsys(item_statistics(train.users, train.items, train.ratings, num_users=n, num_items=d), RecsysConfig(**kw), rating_range=(-5.0, 11.0))


@pytest.mark.parametrize("mode, rounds", [("ls", 10), pytest.param("gd", 150, marks=pytest.mark.slow)])
def test_lrs_recovers_a_low_rank_rating_matrix_and_beats_the_biases(mode, rounds):
    train, test, n, d = _low_rank_ratings()
    lrs = _fit(train, n, d, rank=2, rounds=rounds, mode=mode, ridge_w=1.0, ridge_u=1.0, ridge_user_bias=1.0, ridge_item_bias=1.0, gd_learning_rate=0.5)
    biased = _fit(train, n, d, rank=0, rounds=3, ridge_user_bias=1.0, ridge_item_bias=1.0)
    local = _fit(train, n, d, rank=0, rounds=0, ridge_user_bias=1.0)
    assert lrs.rmse(test) < 1.3 * NOISE  # close to the noise floor
    assert lrs.rmse(test) < 0.5 * biased.rmse(test)
    assert biased.rmse(test) < local.rmse(test)


def test_sparse_part_takes_the_users_largest_exceptions_on_rated_items():
    train, test, n, d = _low_rank_ratings(seed=1)
    corrupted = train.ratings.copy()
    first = np.flatnonzero(train.users == 0)[:2]
    corrupted[first] += 8.0  # two gross exceptions of user 0
    train = Ratings(train.users, train.items, corrupted)
    fit = _fit(train, n, d, rank=2, rounds=8, sparsity=2, ridge_w=1.0, ridge_u=1.0, ridge_b=1e-3).fit
    assert set(fit.b_items[0].tolist()) == set(train.items[first].tolist())
    assert (fit.b_values[0] > 6).all()


def test_contribution_weights_cap_each_users_rated_items():
    stats = item_statistics(np.repeat([0, 1], [7, 3]), np.r_[np.arange(7), np.arange(3)], np.ones(10), num_users=2, num_items=9)
    weights = contribution_weights(stats, 4, torch.Generator().manual_seed(0))
    assert weights.sum(1).tolist() == [4, 3]
    assert (weights <= (stats.count > 0)).all()
    assert contribution_weights(stats, 0, torch.Generator()).sum().item() == 10


@pytest.mark.slow
def test_private_run_is_accounted_audited_and_bounded(tmp_path):
    train, test, n, d = _low_rank_ratings(seed=2)
    stats = item_statistics(train.users, train.items, train.ratings, num_users=n, num_items=d)
    config = RecsysConfig(rank=2, rounds=3, private=True, target_epsilon=4.0, delta=1e-5, rating_cap=10, noise_seed=0)
    result = fit_recsys(stats, config, rating_range=(-5.0, 11.0))
    assert len(result.ledger) == 3
    assert result.epsilon() <= 4.0 and result.epsilon() == pytest.approx(compute_epsilon(result.ledger.events, delta=1e-5).epsilon)
    assert result.offset == 3.0  # the public midpoint, not the data's mean
    result.write_privacy_report(tmp_path)
    assert audit_report(tmp_path / "privacy_report.json").ok
    # the worst case of the per-rating bounds is the clip: A_i's norm is (1 + B^2) sqrt(cap) at most
    w = torch.nn.functional.normalize(torch.randn(n, 2, dtype=torch.float64), dim=1) * config.factor_bound
    capped = stats.with_weights(contribution_weights(stats, config.rating_cap, torch.Generator()))
    norm_A, _ = item_contribution_norms(torch.cat([w, torch.ones(n, 1, dtype=torch.float64)], 1), capped, capped.total)
    assert float(norm_A.max()) == pytest.approx((1 + config.factor_bound**2) * math.sqrt(config.rating_cap))


def test_more_privacy_costs_accuracy():
    train, test, n, d = _low_rank_ratings(n=400, seed=3)
    errors = [np.mean([_fit(train, n, d, rank=0, rounds=1, private=True, target_epsilon=eps, delta=1e-5, rating_cap=20, noise_seed=s, seed=s).rmse(test)
                       for s in range(3)]) for eps in (0.25, 8.0)]
    assert errors[1] < errors[0]


@pytest.mark.parametrize("kw, match", [(dict(rank=-1), "rank"), (dict(mode="als"), "mode"), (dict(ridge_w=0.0), "ridge_w"),
                                       (dict(private=True, rounds=0), "rounds"), (dict(sample_rate=1.5), "sample_rate")])
def test_config_refuses_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        RecsysConfig(**kw)


def test_private_run_needs_a_rating_cap():
    train, _, n, d = _low_rank_ratings(n=20, d=10)
    with pytest.raises(ValueError, match="rating_cap"):
        _fit(train, n, d, rank=1, rounds=1, private=True)


def test_the_task_obeys_the_contract_and_its_parts_carry_the_private_bounds():
    from fedlrs.tasks.base import Task

    config = RecsysConfig(rank=2, rounds=1, private=True, rating_cap=9, factor_bound=2.0, residual_bound=0.5)
    task = RecsysTask(config, 7, rating_range=(1.0, 5.0))
    assert isinstance(task, Task) and task.round_phases({}) == ("round",) and task.init_phases() == ()
    assert [(p.name, p.shape, p.bound, p.symmetric) for p in task.parts("round", {})] == [("A", (7, 3, 3), 5 * 3, True), ("c", (7, 3), math.sqrt(5) * 3 * 0.5, False)]
    gd = RecsysTask(RecsysConfig(rank=0, rounds=1, mode="gd", private=True, rating_cap=4), 7, rating_range=(1.0, 5.0))
    assert [(p.name, p.shape, p.bound) for p in gd.parts("round", {})] == [("G", (7, 1), 2 * 1.0)]  # R = (5 - 1) / 4, w' = [1]
    plain = RecsysTask(RecsysConfig(rank=1), 7, rating_range=(1.0, 5.0), multihot=True)
    assert [(p.name, p.bound) for p in plain.parts("round", {})] == [("A", math.inf), ("G", math.inf)] and plain.clipping() is None
    with pytest.raises(ValueError, match="multi-hot"):
        RecsysTask(config, 7, rating_range=(1.0, 5.0), multihot=True)


def test_a_round_the_budget_refuses_raises_and_records_nothing():
    from fedlrs.privacy import BudgetExceededError, Ledger

    train, _, n, d = _low_rank_ratings(n=40, d=12)
    ledger = Ledger()
    with pytest.raises(BudgetExceededError, match="round 1"):
        fit_recsys(item_statistics(train.users, train.items, train.ratings, num_users=n, num_items=d),
                   RecsysConfig(rank=1, rounds=2, private=True, noise_multiplier=0.3, target_epsilon=1.0, rating_cap=5), rating_range=(-5.0, 11.0), ledger=ledger)
    assert len(ledger) == 0
