"""The multi-hot feature path of AMHT-LRS (fedlrs.core.multihot) against the dense path, the one-hot path and on its own."""

import numpy as np
import pytest
import torch

from fedlrs.core import UserStats, gd_gradient_sum, solve_local
from fedlrs.core.multihot import (FeatureStats, feature_buckets, feature_contributions, feature_predictions, feature_statistics, majorized_step,
                                  solve_local_features)
from fedlrs.core.sparse import ItemFit, item_normal_equations, item_residual_totals, item_solve, item_statistics, solve_local_items
from test_sparse import _Allocations  # tests/core is on the path (rootdir-relative imports)

DT = torch.float64


def _rows(n=6, d=25, m=10, z=3, seed=0):
    """``m`` rows per user, each with ``z`` distinct features of Gaussian values: CSR arrays, the users and ratings, and the dense X."""
    rng = np.random.default_rng(seed)
    R = n * m
    columns = np.concatenate([rng.choice(d, z, replace=False) for _ in range(R)])
    values = rng.normal(size=R * z)
    X = np.zeros((R, d))
    X[np.repeat(np.arange(R), z), columns] = values
    return np.repeat(np.arange(n), m), np.arange(R + 1) * z, columns, values, rng.normal(size=R), X


def _stats(rows, n, d):
    users, indptr, columns, values, y, _ = rows
    return feature_statistics(users, indptr, columns, values, y, num_users=n, num_features=d)


def _dense_stats(X, users, y, n):
    """``X_i^T X_i``, ``X_i^T y_i`` of the design ``X`` (rows of every user)."""
    xtx = np.stack([X[users == i].T @ X[users == i] for i in range(n)])
    xty = np.stack([X[users == i].T @ y[users == i] for i in range(n)])
    return UserStats(torch.tensor(xtx), torch.tensor(xty), torch.zeros(n, dtype=DT), torch.tensor(np.bincount(users, minlength=n), dtype=DT))


def test_feature_statistics_packs_rows_and_local_features():
    stats = feature_statistics([1, 0, 1], [0, 2, 3, 5], [4, 2, 2, 1, 4], [1.0, 2.0, 3.0, 4.0, 5.0], [7.0, 8.0, 9.0], num_users=3, num_features=6)
    assert stats.features.shape == (3, 3) and stats.columns.shape == (3, 2, 2)
    assert stats.features[1][stats.feature_mask[1]].tolist() == [1, 2, 4] and stats.features[0][stats.feature_mask[0]].tolist() == [2]
    assert stats.ratings[1].tolist() == [7.0, 9.0] and stats.mask.sum(1).tolist() == [1, 2, 0]
    # user 1's second row: features 1 and 4 with values 4 and 5
    row = {int(stats.features[1, c]): float(v) for c, v in zip(stats.columns[1, 1], stats.values[1, 1])}
    assert row == {1: 4.0, 4: 5.0}


@pytest.mark.parametrize("indptr, columns, match", [
    ([0, 1, 1], [2], "row 1 has no non-zero"),
    ([0, 1, 2], [2, -1], "feature id -1 in row 1"),
    ([0, 1, 2], [2, 6], "feature id 6 in row 1"),
    ([0, 2, 3], [2, 2, 0], "row 0 has feature 2 twice"),
])
def test_bad_rows_are_refused_by_name(indptr, columns, match):
    with pytest.raises(ValueError, match=match):
        feature_statistics([0, 0], indptr, columns, np.ones(len(columns)), [1.0, 2.0], num_users=1, num_features=6)


@pytest.mark.parametrize("sparsity", [0, 2])
def test_local_step_equals_the_dense_solver_on_the_multi_hot_design(sparsity):
    n, d, r = 6, 25, 2
    rows = _rows(n, d)
    users, y, X = rows[0], rows[4], rows[5]
    P = torch.randn(d, r + 1, dtype=DT, generator=torch.Generator().manual_seed(1))
    fit = solve_local_features(P, _stats(rows, n, d), offset=0.4, sparsity=sparsity, ridge_w=0.1, ridge_b=0.1, starts=4, refine_steps=1)
    # dense: the user bias is the coordinate of a constant feature; the offset and item bias are known parts of the target
    X1 = np.hstack([X, np.ones((len(y), 1))])
    U_dense = torch.zeros(d + 1, r + 1, dtype=DT)
    U_dense[:d, :r], U_dense[d, r] = P[:, :r], 1
    target = y - 0.4 - X @ P[:, -1].numpy()
    dense = solve_local(U_dense, _dense_stats(X1, users, target, n), sparsity=sparsity, ridge_w=0.1, ridge_b=0.1, refine_steps=1, starts=4,
                        ridge_units=torch.ones(n, dtype=DT))  # the feature path's ridges are absolute, as the item path's
    torch.testing.assert_close(fit.w, dense.w[:, :r])
    torch.testing.assert_close(fit.user_bias, dense.w[:, r])
    torch.testing.assert_close(torch.zeros(n, d + 1, dtype=DT).scatter(1, fit.b_items, fit.b_values), dense.b)


def test_one_hot_rows_give_the_one_hot_path_local_step_and_als_update():
    n, d, r = 8, 20, 2
    rng = np.random.default_rng(3)
    users = np.repeat(np.arange(n), 6)
    items = np.concatenate([rng.choice(d, 6, replace=False) for _ in range(n)])
    y = rng.normal(size=len(items))
    rows = feature_statistics(users, np.arange(len(items) + 1), items, np.ones(len(items)), y, num_users=n, num_features=d)
    per_item = item_statistics(users, items, y, num_users=n, num_items=d)
    P = torch.randn(d, r + 1, dtype=DT, generator=torch.Generator().manual_seed(4))
    kw = dict(offset=0.2, sparsity=2, ridge_w=0.3, ridge_b=0.3, starts=4, refine_steps=1)
    fit, item_fit = solve_local_features(P, rows, **kw), solve_local_items(P, per_item, **kw)
    torch.testing.assert_close(fit.w, item_fit.w)
    torch.testing.assert_close(fit.user_bias, item_fit.user_bias)
    assert torch.equal(fit.b_items.sort(1).values, item_fit.b_items.sort(1).values)
    parts = feature_contributions(P, fit, rows, offset=0.2, mode="ls")
    A, c = item_normal_equations(torch.cat([fit.w, torch.ones(n, 1, dtype=DT)], 1), per_item, item_residual_totals(P, fit, per_item, offset=0.2))
    torch.testing.assert_close(parts["A"], A)  # nnz = 1: the majorizer is the exact block
    stepped = majorized_step(P, parts["A"], parts["G"], normalizer=n, ridge=0.5, ridge_bias=0.7)
    torch.testing.assert_close(stepped, item_solve(A, c, normalizer=n, ridge=0.5, ridge_bias=0.7))  # one step = exact ALS


def _loss(P, fit, stats, lam):
    """``sum ||y - p||^2 / 2 + sum_j P_j^T Lam P_j / 2``: the loss the "ls" step must not raise."""
    residual = (feature_predictions(P, fit, stats, offset=0.0) - stats.ratings) * stats.count
    return float(residual.square().sum() / 2 + (P.square() * lam).sum() / 2)


def test_gradient_equals_the_dense_gradient_and_the_majorized_step_never_raises_the_loss():
    n, d, r = 6, 25, 2
    rows = _rows(n, d)
    users, y, X = rows[0], rows[4], rows[5]
    stats = _stats(rows, n, d)
    g = torch.Generator().manual_seed(2)
    P = torch.randn(d, r + 1, dtype=DT, generator=g)
    fit = solve_local_features(P, stats, offset=0.0, sparsity=1, ridge_w=0.1, ridge_b=0.1)
    parts = feature_contributions(P, fit, stats, offset=0.0, mode="ls")
    w_ext = torch.cat([fit.w, torch.ones(n, 1, dtype=DT)], 1)
    B = torch.zeros(n, d, dtype=DT).scatter(1, fit.b_items, fit.b_values)
    theta = w_ext @ P.T + B
    dense = _dense_stats(X, users, y - fit.user_bias.numpy()[users], n)
    e = (dense.xtx @ theta.unsqueeze(-1)).squeeze(-1) - dense.xty
    torch.testing.assert_close(parts["G"], gd_gradient_sum(e, w_ext))
    lam = torch.tensor([0.1, 0.1, 0.2], dtype=DT)
    before = _loss(P, fit, stats, lam)
    for _ in range(5):
        parts = feature_contributions(P, fit, stats, offset=0.0, mode="ls")
        P_next = majorized_step(P, parts["A"], parts["G"], normalizer=1.0, ridge=0.1, ridge_bias=0.2)
        after = _loss(P_next, fit, stats, lam)
        assert after <= before + 1e-9
        P, before = P_next, after
    assert after < 0.9 * _loss(torch.randn(d, r + 1, dtype=DT, generator=torch.Generator().manual_seed(2)), fit, stats, lam)


class _LargeAllocations(_Allocations):
    """Also collects the storages of at least ``size`` bytes an operation returns."""

    def __init__(self, exclude: torch.Tensor, size: int):
        super().__init__(exclude)
        self.size, self.large = size, set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() != self.exclude and t.untyped_storage().nbytes() >= self.size:
                self.large.add(t.untyped_storage().data_ptr())
        return out


def _peaks(d: int) -> tuple[int, dict]:
    rng = np.random.default_rng(0)
    columns = np.concatenate([rng.choice(d, 3, replace=False) for _ in range(10)])
    stats = feature_statistics(np.zeros(10, dtype=int), np.arange(11) * 3, columns, np.ones(30), rng.normal(size=10), num_users=1, num_features=d)
    P = torch.randn(d, 9, dtype=DT)
    with _Allocations(P) as tracker:
        fit = solve_local_features(P, stats, offset=3.0, sparsity=2, ridge_w=1.0, ridge_b=1.0)
        feature_predictions(P, fit, stats, offset=3.0)
    replies = {}
    for mode in ("gd", "ls"):
        with _LargeAllocations(P, d * 8) as large:
            parts = feature_contributions(P, fit, stats, offset=3.0, mode=mode)
        replies[mode] = (len(large.large), large.largest == max(p.untyped_storage().nbytes() for p in parts.values()))
    return tracker.largest, replies


def test_one_local_step_allocates_by_the_users_rows_not_by_d():
    """d = 100,000 features, a user with 10 rows of 3 non-zeros: no tensor of the local step grows with d; its reply is
    the (d, r') sums and nothing else of size d is allocated."""
    (large, replies), (small, _) = _peaks(100_000), _peaks(1_000)
    assert large == small
    assert large <= 8 * 30 * 30 * 9  # O(s m z + f r) doubles, f <= 30 local features; P alone is 100,000 x 9 doubles
    assert replies == {"gd": (1, True), "ls": (2, True)}  # G (d, r'), and A (d, r', r'): the parts themselves


def test_feature_buckets_trim_rows_and_features_and_change_no_fit():
    rng = np.random.default_rng(5)
    n, d = 30, 200
    per_user = rng.integers(1, 40, size=n)
    R = int(per_user.sum())
    width = rng.integers(1, 4, size=R)
    columns = np.concatenate([rng.choice(d, k, replace=False) for k in width])
    stats = feature_statistics(np.repeat(np.arange(n), per_user), np.concatenate([[0], np.cumsum(width)]), columns, rng.normal(size=len(columns)),
                               rng.normal(size=R), num_users=n, num_features=d)
    P = torch.randn(d, 3, dtype=DT)
    whole = solve_local_features(P, stats, offset=0.0, sparsity=0, ridge_w=1.0, ridge_b=0.0)
    groups = feature_buckets(stats)
    assert sorted(torch.cat([index for index, _ in groups]).tolist()) == list(range(n))
    for index, group in groups:
        assert isinstance(group, FeatureStats) and group.mask.shape[1] < 2 * torch.as_tensor(per_user)[index].min()
        part = solve_local_features(P, group, offset=0.0, sparsity=0, ridge_w=1.0, ridge_b=0.0)
        torch.testing.assert_close(part.w, whole.w[index])
        torch.testing.assert_close(part.user_bias, whole.user_bias[index])


def test_contributions_refuse_an_unknown_mode():
    rows = _rows(2, 10, 3)
    stats = _stats(rows, 2, 10)
    fit = ItemFit(torch.zeros(2, 1, dtype=DT), torch.zeros(2, dtype=DT), torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=DT))
    with pytest.raises(ValueError, match="mode == 'exact'"):
        feature_contributions(torch.zeros(10, 2, dtype=DT), fit, stats, offset=0.0, mode="exact")
