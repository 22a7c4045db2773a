"""scipy.sparse X in LRSRegressor: one-hot CSR goes to the matrix-completion path (chosen from the data), other sparse X is made dense."""

import numpy as np
import pytest
import scipy.sparse as sp

from fedlrs import LRSRegressor
from fedlrs.core.sparse import item_statistics
from fedlrs.recsys.model import RecsysConfig, fit_recsys


def _ratings(n=120, d=30, seed=0):
    """``y_ij = 3 + a_i + c_j + U*_j . w*_i + N(0, 0.2^2)`` on 40% of the pairs; rows as a one-hot CSR."""
    rng = np.random.default_rng(seed)
    U, W = rng.normal(size=(d, 2)), rng.normal(size=(n, 2))
    users, items = np.nonzero(rng.random((n, d)) < 0.4)
    y = 3 + rng.normal(scale=0.5, size=n)[users] + rng.normal(scale=0.5, size=d)[items] + (U[items] * W[users]).sum(1) + rng.normal(scale=0.2, size=len(users))
    X = sp.csr_matrix((np.ones(len(items)), (np.arange(len(items)), items)), shape=(len(items), d))
    return X, y, users, items


def test_one_hot_csr_runs_the_matrix_completion_path_and_fits():
    X, y, users, items = _ratings()
    test = np.random.default_rng(1).random(len(y)) < 0.2
    model = LRSRegressor(rank=2, rounds=10, ridge_w=1.0, ridge_u=1.0, ridge_b=1.0).fit(X[~test], y[~test], users[~test])
    assert model.one_hot_ and model.U_.shape == (30, 2) and model.W_.shape == (120, 2)
    # the same fit as fedlrs.recsys on the same rows
    stats = item_statistics(users[~test], items[~test], y[~test], num_users=120, num_items=30)
    direct = fit_recsys(stats, RecsysConfig(rank=2, rounds=10, ridge_w=1.0, ridge_u=1.0, ridge_b=1.0, ridge_user_bias=1.0, ridge_item_bias=1.0, seed=0),
                        rating_range=(float(y[~test].min()), float(y[~test].max())))
    np.testing.assert_allclose(model.predict(X[test], users[test]), direct.predict(users[test], items[test]).numpy())
    assert model.score(X[test], y[test], users[test]) > 0.9
    np.testing.assert_allclose(model.thetas_[users[test], items[test]], model.predict(X[test], users[test]))


def test_dense_and_non_one_hot_sparse_stay_on_the_dense_path():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = X @ rng.normal(size=5)
    groups = np.repeat(np.arange(20), 10)
    dense = LRSRegressor(rank=1, rounds=3).fit(X, y, groups)
    sparse = LRSRegressor(rank=1, rounds=3).fit(sp.csr_matrix(X), y, groups)
    assert not dense.one_hot_ and not sparse.one_hot_
    np.testing.assert_allclose(sparse.predict(sp.csr_matrix(X), groups), dense.predict(X, groups))


def test_private_one_hot_fit_is_refused_with_a_clear_error():
    X, y, users, _ = _ratings()
    with pytest.raises(ValueError, match="rating cap"):
        LRSRegressor(rank=2, epsilon=1.0, delta=1e-5).fit(X, y, users)
