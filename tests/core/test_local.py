import pytest
import torch

from fedlrs.core import mean_relative_error, solve_local, sufficient_statistics, support_f1, user_parameters
from fedlrs.data.synthetic import make_lrs_data


@pytest.fixture(scope="module")
def federation():
    return make_lrs_data(users=400, examples=25, dim=30, rank=3, sparsity=3, noise=0.01, seed=3)


def test_oracle_recovers_parameters_and_supports(federation):
    fit = solve_local(federation.U_star, sufficient_statistics(federation.train), sparsity=3)
    theta = user_parameters(federation.U_star, fit)
    assert mean_relative_error(theta, federation.theta_star) < 5e-3
    assert support_f1(fit.b, federation.B_star) > 0.97
    assert int((fit.b != 0).sum(1).max()) <= 3


def test_noiseless_oracle_is_exact():
    data = make_lrs_data(users=50, examples=40, dim=20, rank=2, sparsity=2, noise=0.0, seed=1, sparse_scale=3.0)
    fit = solve_local(data.U_star, sufficient_statistics(data.train), sparsity=2, ridge_w=0, ridge_b=0)
    torch.testing.assert_close(user_parameters(data.U_star, fit), data.theta_star, atol=1e-8, rtol=1e-8)


def test_multistart_search_beats_single_start(federation):
    stats = sufficient_statistics(federation.train)
    errors = [
        mean_relative_error(user_parameters(federation.U_star, solve_local(federation.U_star, stats, sparsity=3, starts=s, refine_steps=0)), federation.theta_star)
        for s in (1, 8)
    ]
    assert errors[1] < errors[0]


def test_batched_solve_equals_one_user_at_a_time(federation):
    stats = sufficient_statistics(federation.train)
    batch = solve_local(federation.U_star, stats, sparsity=3)
    for i in (0, 7, 123):
        one = solve_local(federation.U_star, stats.select(torch.tensor([i])), sparsity=3)
        torch.testing.assert_close(one.w[0], batch.w[i])
        torch.testing.assert_close(one.b[0], batch.b[i])


def test_rank_zero_and_sparsity_zero(federation):
    stats = sufficient_statistics(federation.train)
    sparse = solve_local(federation.U_star[:, :0], stats, sparsity=3)
    assert sparse.w.shape == (400, 0) and int((sparse.b != 0).sum(1).max()) == 3
    low = solve_local(federation.U_star, stats, sparsity=0)
    assert torch.count_nonzero(low.b) == 0


def test_bad_sparsity_and_shape_are_refused(federation):
    stats = sufficient_statistics(federation.train)
    with pytest.raises(ValueError, match="sparsity == 30"):
        solve_local(federation.U_star, stats, sparsity=30)
    with pytest.raises(ValueError, match="U has 10 rows"):
        solve_local(federation.U_star[:10], stats, sparsity=1)


def test_projected_gram_pieces_match_the_dense_matrix(federation):
    from fedlrs.core.local import _projected_problem

    stats = sufficient_statistics(federation.train).select(torch.arange(5))
    U = federation.U_star
    H, h, _, _ = _projected_problem(U, stats, 0.1, 0.2)
    V = stats.xtx @ U
    unit = (torch.diagonal(stats.xtx, dim1=1, dim2=2).mean(1) / stats.count).view(-1, 1, 1)  # ridges in units of tr(S_i) / (d m_i)
    G = U.T @ V + 0.1 * unit * torch.eye(3, dtype=U.dtype)
    dense = stats.xtx - V @ torch.linalg.solve(G, V.transpose(1, 2)) + 0.2 * unit * torch.eye(30, dtype=U.dtype)
    index = torch.tensor([[3, 7, 1]] * 5)
    torch.testing.assert_close(H.diagonal(), torch.diagonal(dense, dim1=1, dim2=2))
    rows = H.rows(index)
    torch.testing.assert_close(rows, dense[:, [3, 7, 1]])
    torch.testing.assert_close(H.block(index, rows), dense[:, [3, 7, 1]][:, :, [3, 7, 1]])
