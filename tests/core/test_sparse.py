"""The one-hot item path of AMHT-LRS (fedlrs.core.sparse) against the dense path and on its own."""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fedlrs.core import UserStats, gd_gradient_sum, ls_system, solve_local
from fedlrs.core.sparse import (ItemFit, extended_coordinates, item_gradient_rows, item_gradient_sum, item_normal_equations, item_residual_totals, item_solve,
                                item_statistics, length_buckets, rating_predictions, solve_local_items)

DT = torch.float64


def _ratings(n=6, d=25, m=10, seed=0):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n), m)
    items = np.concatenate([rng.choice(d, m, replace=False) for _ in range(n)])
    return users, items, rng.normal(size=n * m)


def _dense_stats(users, items, y, n, d, constant: bool):
    """``X_i^T X_i``, ``X_i^T y_i`` of the one-hot design (plus a constant column)."""
    width = d + int(constant)
    X = np.zeros((len(y), width))
    X[np.arange(len(y)), items] = 1
    if constant:
        X[:, -1] = 1
    xtx = np.stack([X[users == i].T @ X[users == i] for i in range(n)])
    xty = np.stack([X[users == i].T @ y[users == i] for i in range(n)])
    return UserStats(torch.tensor(xtx), torch.tensor(xty), torch.zeros(n, dtype=DT), torch.tensor(np.bincount(users, minlength=n), dtype=DT))


def test_item_statistics_sums_repeated_pairs_and_pads():
    stats = item_statistics([0, 0, 0, 2], [3, 3, 1, 4], [1.0, 2.0, 5.0, 4.0], num_users=3, num_items=5)
    assert stats.items.shape == (3, 2)
    assert stats.items[0].tolist() == [1, 3] and stats.count[0].tolist() == [1, 2] and stats.total[0].tolist() == [5, 3]
    assert stats.count[1].sum() == 0 and stats.num_ratings.tolist() == [3, 0, 1]
    with pytest.raises(ValueError, match="item ids"):
        item_statistics([0], [5], [1.0], num_users=1, num_items=5)


@pytest.mark.parametrize("sparsity", [0, 2])
def test_local_step_equals_dense_solver_on_the_one_hot_design(sparsity):
    n, d, r = 6, 25, 2
    users, items, y = _ratings(n, d)
    P = torch.cat([torch.randn(d, r, dtype=DT, generator=torch.Generator().manual_seed(1)), torch.zeros(d, 1, dtype=DT)], 1)
    fit = solve_local_items(P, item_statistics(users, items, y, num_users=n, num_items=d), offset=0.0, sparsity=sparsity, ridge_w=0.1, ridge_b=0.1,
                            starts=4, refine_steps=1)
    U_dense = torch.zeros(d + 1, r + 1, dtype=DT)  # the user bias is the coordinate of the constant feature
    U_dense[:d, :r], U_dense[d, r] = P[:, :r], 1
    dense = solve_local(U_dense, _dense_stats(users, items, y, n, d, True), sparsity=sparsity, ridge_w=0.1, ridge_b=0.1, refine_steps=1, starts=4,
                         ridge_units=torch.ones(n, dtype=DT))  # the item path's ridges are per rating, absolute
    torch.testing.assert_close(fit.w, dense.w[:, :r])
    torch.testing.assert_close(fit.user_bias, dense.w[:, r])
    b = torch.zeros(n, d + 1, dtype=DT).scatter(1, fit.b_items, fit.b_values)
    torch.testing.assert_close(b, dense.b)


def test_item_bias_and_offset_enter_as_known_parts_of_the_target():
    users, items, y = _ratings()
    stats = item_statistics(users, items, y, num_users=6, num_items=25)
    P = torch.randn(25, 3, dtype=DT)
    shifted = item_statistics(users, items, y - 0.7 - P[items, -1].numpy(), num_users=6, num_items=25)
    P0 = P.clone()
    P0[:, -1] = 0
    a = solve_local_items(P, stats, offset=0.7, sparsity=0, ridge_w=0.5, ridge_b=0.0)
    b = solve_local_items(P0, shifted, offset=0.0, sparsity=0, ridge_w=0.5, ridge_b=0.0)
    torch.testing.assert_close(a.w, b.w)
    torch.testing.assert_close(a.user_bias, b.user_bias)


def test_ls_blocks_and_gd_rows_equal_the_dense_contributions():
    n, d, r = 6, 25, 2
    users, items, y = _ratings(n, d)
    stats = item_statistics(users, items, y, num_users=n, num_items=d)
    g = torch.Generator().manual_seed(2)
    fit = ItemFit(torch.randn(n, r, generator=g, dtype=DT), torch.zeros(n, dtype=DT), stats.items[:, :1], torch.randn(n, 1, generator=g, dtype=DT))
    w_ext = extended_coordinates(fit.w)
    A, c = item_normal_equations(w_ext, stats, item_residual_totals(None, fit, stats, offset=0.0))
    dense_stats = _dense_stats(users, items, y, n, d, False)
    B = torch.zeros(n, d, dtype=DT).scatter(1, fit.b_items, fit.b_values)
    A_dense, c_dense = ls_system(dense_stats, w_ext, B)
    rw = r + 1
    blocks = A_dense.reshape(rw, d, rw, d).diagonal(dim1=1, dim2=3).permute(2, 0, 1)  # [j, a, b] = A[a d + j, b d + j]
    torch.testing.assert_close(A, blocks)
    off_diagonal = A_dense.reshape(rw, d, rw, d).clone()
    off_diagonal[:, torch.arange(d), :, torch.arange(d)] = 0
    assert float(off_diagonal.abs().max()) == 0.0  # one-hot: nothing outside the per-item blocks
    torch.testing.assert_close(c, c_dense.reshape(rw, d).T)
    P = torch.randn(d, rw, generator=g, dtype=DT)
    rows = item_gradient_rows(P, fit, stats, offset=0.0)
    theta = w_ext @ P.T + B
    e_dense = (dense_stats.xtx @ theta.unsqueeze(-1)).squeeze(-1) - dense_stats.xty
    torch.testing.assert_close(item_gradient_sum(w_ext, stats, rows), gd_gradient_sum(e_dense, w_ext))


def test_item_solve_is_the_per_item_ridge_solution_and_survives_indefinite_noise():
    g = torch.Generator().manual_seed(3)
    M = torch.randn(4, 3, 3, generator=g, dtype=DT)
    A = M @ M.transpose(1, 2)
    c = torch.randn(4, 3, generator=g, dtype=DT)
    P = item_solve(A, c, normalizer=2.0, ridge=0.5, ridge_bias=1.5)
    expected = torch.linalg.solve(A + torch.diag(torch.tensor([0.5, 0.5, 1.5], dtype=DT)), c.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(P, expected)
    indefinite = -10 * torch.eye(3, dtype=DT).expand(4, 3, 3)
    assert torch.isfinite(item_solve(indefinite, c, normalizer=1.0, ridge=1e-3)).all()
    torch.testing.assert_close(item_solve(indefinite, c, normalizer=1.0, ridge=2.0), c / 2)  # negative part projected away
    with pytest.raises(ValueError, match="ridge"):
        item_solve(A, c, normalizer=1.0, ridge=0.0)


class _Allocations(TorchDispatchMode):
    """The largest storage (bytes) of any tensor an operation returns, except views of ``exclude``."""

    def __init__(self, exclude: torch.Tensor):
        super().__init__()
        self.exclude, self.largest = exclude.untyped_storage().data_ptr(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() != self.exclude:
                self.largest = max(self.largest, t.untyped_storage().nbytes())
        return out


def _local_step_peak(d: int) -> int:
    rng = np.random.default_rng(0)
    items = rng.choice(d, 10, replace=False)
    stats = item_statistics(np.zeros(10, dtype=int), items, rng.normal(size=10), num_users=1, num_items=d)
    P = torch.randn(d, 9, dtype=DT)
    with _Allocations(P) as tracker:
        fit = solve_local_items(P, stats, offset=3.0, sparsity=2, ridge_w=1.0, ridge_b=1.0)
        rating_predictions(P, fit, stats.items, offset=3.0)
    return tracker.largest


def test_one_local_step_allocates_by_the_users_ratings_not_by_d():
    """d = 100,000 items, a user with 10 ratings: no tensor of the local step grows with d."""
    large, small = _local_step_peak(100_000), _local_step_peak(1_000)
    assert large == small
    assert large <= 10 * 10 * 9 * 8  # O(m^2 + m r) doubles; the published P alone is 100,000 x 9 doubles


def test_length_buckets_pad_each_user_to_less_than_twice_its_ratings_and_change_no_fit():
    rng = np.random.default_rng(4)
    n, d = 40, 300
    per_user = rng.integers(1, 120, size=n)
    users = np.repeat(np.arange(n), per_user)
    items = np.concatenate([rng.choice(d, m, replace=False) for m in per_user])
    stats = item_statistics(users, items, rng.normal(size=len(users)), num_users=n, num_items=d)
    groups = length_buckets(stats)
    seen = torch.cat([index for index, _ in groups])
    assert sorted(seen.tolist()) == list(range(n))
    for index, group in groups:
        assert group.items.shape[1] < 2 * torch.as_tensor(per_user)[index].min()
        assert torch.equal(group.num_ratings, stats.num_ratings[index])
    P = torch.randn(d, 4, dtype=DT)
    whole = solve_local_items(P, stats, offset=0.0, sparsity=0, ridge_w=1.0, ridge_b=0.0)
    for index, group in groups:
        part = solve_local_items(P, group, offset=0.0, sparsity=0, ridge_w=1.0, ridge_b=0.0)
        torch.testing.assert_close(part.w, whole.w[index])
        torch.testing.assert_close(part.user_bias, whole.user_bias[index])
