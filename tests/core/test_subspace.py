import torch

from fedlrs.core import (
    UserData,
    gd_gradient_sum,
    gd_residual_vectors,
    ls_solve,
    ls_system,
    moment_norms,
    moment_sum,
    orthonormalize,
    principal_angle_distance,
    sufficient_statistics,
    top_eigenvectors,
)
from fedlrs.data.synthetic import make_lrs_data

f64 = torch.float64


def test_ls_system_is_the_sum_of_kronecker_contributions_with_column_major_vec():
    n, m, d, r = 4, 6, 5, 3
    data = UserData(torch.randn(n, m, d, dtype=f64), torch.randn(n, m, dtype=f64), torch.ones(n, m, dtype=torch.bool))
    stats = sufficient_statistics(data)
    W, B = torch.randn(n, r, dtype=f64), torch.randn(n, d, dtype=f64)
    weights = torch.rand(n, dtype=f64)
    A, c = ls_system(stats, W, B, weights_A=weights, weights_c=weights)
    A_ref = sum(weights[i] * torch.kron(torch.outer(W[i], W[i]), stats.xtx[i]) for i in range(n))
    c_ref = sum(weights[i] * torch.outer(data.X[i].T @ (data.y[i] - data.X[i] @ B[i]), W[i]).T.reshape(-1) for i in range(n))
    torch.testing.assert_close(A, A_ref)
    torch.testing.assert_close(c, c_ref)
    # vec is column-major: A vec(U) = sum_i vec(X^T X U w w^T)
    U = torch.randn(d, r, dtype=f64)
    lhs = A_ref @ U.T.reshape(-1)
    rhs = sum(weights[i] * (stats.xtx[i] @ U @ torch.outer(W[i], W[i])).T.reshape(-1) for i in range(n))
    torch.testing.assert_close(lhs, rhs)


def test_ls_update_recovers_the_subspace_when_w_and_b_are_known():
    data = make_lrs_data(users=300, examples=20, dim=15, rank=3, sparsity=2, noise=0.0, seed=2)
    stats = sufficient_statistics(data.train)
    A, c = ls_system(stats, data.W_star, data.B_star)
    U = ls_solve(A, c, rank=3, normalizer=300.0, ridge=0.0)
    assert principal_angle_distance(U, data.U_star) < 1e-8


def test_gd_gradient_matches_autograd():
    data = make_lrs_data(users=5, examples=8, dim=6, rank=2, sparsity=1, seed=4)
    stats = sufficient_statistics(data.train)
    U = torch.randn(6, 2, dtype=f64, requires_grad=True)
    W, B = torch.randn(5, 2, dtype=f64), data.B_star
    theta = W @ U.T + B
    residual = (data.train.X @ theta.unsqueeze(-1)).squeeze(-1) - data.train.y
    loss = 0.5 * (residual.pow(2).sum(1) / 8).sum()
    loss.backward()
    G = gd_gradient_sum(gd_residual_vectors(stats, U.detach(), W, B), W)
    torch.testing.assert_close(G, U.grad)


import pytest


@pytest.mark.parametrize("examples, examples_max", [(2, 3), (5, 9)])  # m_max below and above d = 4
def test_moment_norms_and_sum_match_explicit_matrices(examples, examples_max):
    data = make_lrs_data(users=6, examples=examples, dim=4, rank=2, sparsity=1, seed=5, examples_max=examples_max).train
    explicit = [(data.X[i].T * (data.y[i] ** 2 * data.mask[i])) @ data.X[i] for i in range(6)]
    torch.testing.assert_close(moment_norms(data), torch.stack([torch.linalg.matrix_norm(M) for M in explicit]))
    torch.testing.assert_close(moment_sum(data), sum(explicit))


def test_method_of_moments_finds_the_subspace_with_many_users():
    data = make_lrs_data(users=4000, examples=10, dim=20, rank=2, sparsity=0, seed=6)
    U0 = top_eigenvectors(moment_sum(data.train), 2)
    assert principal_angle_distance(U0, data.U_star) < 0.2


def test_orthonormalize_gives_orthonormal_columns_with_positive_r():
    M = torch.randn(7, 3, dtype=f64)
    Q = orthonormalize(M)
    torch.testing.assert_close(Q.T @ Q, torch.eye(3, dtype=f64))
    assert (torch.diagonal(Q.T @ M) > 0).all()


def test_one_clear_contribution_reveals_w_direction_and_gram_up_to_scale():
    """docs/threat-model.md, "What a clear reply reveals": one user's (A_i, c_i) or G_i, clipped by any scale."""
    m, d, r = 8, 5, 3
    data = UserData(torch.randn(1, m, d, dtype=f64), torch.randn(1, m, dtype=f64), torch.ones(1, m, dtype=torch.bool))
    stats = sufficient_statistics(data)
    W, B = torch.randn(1, r, dtype=f64), torch.randn(1, d, dtype=f64)
    scale = torch.tensor([0.037], dtype=f64)  # whatever clipping did
    A, c = ls_system(stats, W, B, weights_A=scale, weights_c=scale)
    blocks = A.reshape(r, d, r, d).permute(0, 2, 1, 3)  # blocks[a, b] = s w_a w_b X^T X
    gram = blocks[0, 0] / blocks[0, 0].norm()
    w_outer = torch.einsum("abij,ij->ab", blocks, gram)  # s ||X^T X|| w w^T
    w_seen = torch.linalg.eigh(w_outer).eigenvectors[:, -1]

    def cosine(u, v):
        return float(abs(u.flatten() @ v.flatten()) / (u.norm() * v.norm()))

    assert cosine(w_seen, W[0]) > 1 - 1e-12 and cosine(gram, stats.xtx[0]) > 1 - 1e-12
    G = gd_gradient_sum(gd_residual_vectors(stats, torch.linalg.qr(torch.randn(d, r, dtype=f64))[0], W, B), W, scale)
    assert cosine(torch.linalg.svd(G).Vh[0], W[0]) > 1 - 1e-12


def test_unit_free_gradients_do_not_change_with_the_units_of_x_and_y():
    from fedlrs.core import orthonormalize, random_orthonormal, solve_local, sufficient_statistics, unit_free_gradients
    from fedlrs.data.synthetic import make_lrs_data

    data = make_lrs_data(users=30, examples=6, dim=8, rank=2, sparsity=1, seed=3)
    U = random_orthonormal(8, 2, generator=torch.Generator().manual_seed(0))
    outputs = []
    for a, b in ((1.0, 1.0), (10.0, 100.0), (0.01, 3.0)):
        stats = sufficient_statistics(type(data.train)(data.train.X * a, data.train.y * b, data.train.mask))
        fit = solve_local(U, stats, sparsity=1, ridge_w=0.0, ridge_b=0.0)
        outputs.append(unit_free_gradients(stats, U, fit.w, fit.b))
    for delta, P in outputs[1:]:
        assert torch.allclose(delta, outputs[0][0], atol=1e-8) and torch.allclose(P, outputs[0][1], atol=1e-10)
    assert torch.allclose(torch.diagonal(outputs[0][1], dim1=1, dim2=2).sum(dim=1), torch.ones(30, dtype=torch.float64))


def test_the_preconditioned_step_is_close_to_newton_on_noiseless_data():
    """One unit-free step from a perturbed U* shrinks the distance many times (a raw gradient step of lr 1 halves it at best)."""
    from fedlrs.core import orthonormalize, preconditioned_step, principal_angle_distance, solve_local, sufficient_statistics, unit_free_gradients
    from fedlrs.data.synthetic import make_lrs_data

    data = make_lrs_data(users=4000, examples=10, dim=20, rank=2, sparsity=0, noise=0.0, seed=4)
    stats = sufficient_statistics(data.train)
    U = orthonormalize(data.U_star + 0.05 * torch.randn(20, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    before = principal_angle_distance(U, data.U_star)
    fit = solve_local(U, stats, sparsity=0)
    delta, P = unit_free_gradients(stats, U, fit.w, fit.b)
    after = principal_angle_distance(preconditioned_step(U, delta.sum(0), P.sum(0), normalizer=4000.0), data.U_star)
    assert after < before / 10
