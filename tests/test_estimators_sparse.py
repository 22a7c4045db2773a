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
    assert model.sparse_features_ == "one-hot" and model.U_.shape == (30, 2) and model.W_.shape == (120, 2)
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
    assert dense.sparse_features_ is None and sparse.sparse_features_ is None
    np.testing.assert_allclose(sparse.predict(sp.csr_matrix(X), groups), dense.predict(X, groups))


def test_private_one_hot_fit_is_refused_with_a_clear_error():
    X, y, users, _ = _ratings()
    with pytest.raises(ValueError, match="rating cap"):
        LRSRegressor(rank=2, epsilon=1.0, delta=1e-5).fit(X, y, users)


def _multi_hot(n=150, items=40, genres=6, seed=0):
    """Each item has one or two of ``genres`` genres; a rating's row is the item's one-hot id and its genre indicators.

    ``y_ij = 3 + a_i + x_ij . (c* + U* w*_i) + N(0, 0.1^2)`` with ``U*`` (items + genres, 2).
    """
    rng = np.random.default_rng(seed)
    item_genres = [rng.choice(genres, rng.integers(1, 3), replace=False) for _ in range(items)]
    d = items + genres
    M = np.zeros((items, d))
    M[np.arange(items), np.arange(items)] = 1
    for j, g in enumerate(item_genres):
        M[j, items + g] = 1
    U, W, c = rng.normal(size=(d, 2)), rng.normal(size=(n, 2)), rng.normal(scale=0.5, size=d)
    users, rated = np.nonzero(rng.random((n, items)) < 0.4)
    truth = 3 + rng.normal(scale=0.5, size=n)[:, None] + (W @ U.T + c) @ M.T  # (n, items)
    y = truth[users, rated] + rng.normal(scale=0.1, size=len(users))
    return sp.csr_matrix(M[rated]), y, users, rated, truth, M


def test_multi_hot_csr_runs_the_feature_path_and_recovers_every_users_item_scores():
    X, y, users, rated, truth, M = _multi_hot()
    test = np.random.default_rng(1).random(len(y)) < 0.2
    model = LRSRegressor(rank=2, rounds=30, ridge_w=0.1, ridge_u=0.1, ridge_b=0.1).fit(X[~test], y[~test], users[~test])
    assert model.sparse_features_ == "multi-hot" and model.U_.shape == (46, 2)
    assert model.score(X[test], y[test], users[test]) > 0.95
    every = sp.csr_matrix(np.tile(M, (150, 1)))  # every (user, item) pair, rated or not
    found = model.predict(every, np.repeat(np.arange(150), 40)).reshape(150, 40)
    assert np.sqrt(np.mean((found - truth) ** 2)) < 0.25 * truth.std()
    intercept = model.result_.offset + model.result_.fit.user_bias.numpy()
    np.testing.assert_allclose(model.predict(X[test], users[test]), intercept[users[test]] + np.einsum("nd,nd->n", X[test].toarray(), model.thetas_[users[test]]))


def test_a_multi_hot_row_without_a_feature_and_dense_x_after_a_sparse_fit_are_refused():
    X, y, users, *_ = _multi_hot(n=20)
    empty = sp.vstack([X[:3], sp.csr_matrix((1, X.shape[1])), X[4:]]).tocsr()
    with pytest.raises(ValueError, match="row 3 of X has no non-zero entry"):
        LRSRegressor(rank=2, rounds=2).fit(empty, y, users)
    model = LRSRegressor(rank=2, rounds=2).fit(X, y, users)
    with pytest.raises(ValueError, match="multi-hot sparse X"):
        model.predict(X.toarray(), users)
