"""The shared subspace U: orthonormalization, initialization and the server's update.

Contributions are formed per user (the client sends its own) and summed with
per-user weights (clipping factors, sampling masks); summing the contributions
of a batch with unit weights is the same function called with one user per call
and the results added, so the Flower client, the server and the engine share it.
"""

from __future__ import annotations

import torch

from .stats import UserData, UserStats

Tensor = torch.Tensor


def orthonormalize(M: Tensor) -> Tensor:
    """``Q`` of the reduced QR decomposition ``M = Q R``, signs fixed so ``diag(R) >= 0``."""
    Q, R = torch.linalg.qr(M, mode="reduced")
    signs = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return Q * signs.unsqueeze(-2)


def random_orthonormal(dim: int, rank: int, *, generator: torch.Generator | None = None, dtype=torch.float64, device="cpu") -> Tensor:
    """A (dim, rank) matrix with orthonormal columns, ``QR(G)`` for Gaussian ``G``."""
    G = torch.randn(dim, rank, generator=generator, dtype=dtype, device="cpu").to(device)
    return orthonormalize(G)


def _weights(n: int, weights: Tensor | None, like: Tensor) -> Tensor:
    if weights is None:
        return like.new_ones(n)
    if weights.shape != (n,):
        raise ValueError(f"weights have shape {tuple(weights.shape)}, must be ({n},).")
    return weights.to(like.dtype)


def moment_sum(data: UserData, weights: Tensor | None = None) -> Tensor:
    """``M = sum_i omega_i M_i`` with ``M_i = sum_j y_ij^2 x_ij x_ij^T`` (d, d), one GEMM.

    For Gaussian ``x``, ``E[y^2 x x^T] = ||theta||^2 I + 2 theta theta^T``, so the
    top-r eigenvectors of ``M`` estimate the span of the users' parameters.
    """
    row = data.mask.to(data.X.dtype) * data.y * data.y
    row = row * _weights(data.num_users, weights, data.X).unsqueeze(-1)
    flat = data.X.reshape(-1, data.dim)
    return (flat * row.reshape(-1, 1)).T @ flat


def moment_norms(data: UserData) -> Tensor:
    """``||M_i||_F`` per user, from whichever is smaller, ``M_i`` itself (d x d) or the Gram (m x m):

    ``||M_i||_F^2 = sum_{j,l} (y_ij y_il x_ij . x_il)^2`` (the Gram form, for users with few examples).
    """
    scaled = data.X * (data.y * data.mask.to(data.X.dtype)).unsqueeze(-1)
    if data.X.shape[1] <= data.dim:
        gram = scaled @ scaled.transpose(1, 2)
    else:
        gram = scaled.transpose(1, 2) @ scaled  # = M_i, same Frobenius norm
    return gram.pow(2).sum(dim=(1, 2)).sqrt()


def top_eigenvectors(M: Tensor, rank: int) -> Tensor:
    """The ``rank`` eigenvectors of the symmetric ``M`` with largest eigenvalues, as columns."""
    sym = (M + M.T) / 2
    _, vectors = torch.linalg.eigh(sym)
    return orthonormalize(vectors[:, -rank:].flip(-1))


def ls_system(stats: UserStats, W: Tensor, B: Tensor, *, weights_A: Tensor | None = None, weights_c: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The summed normal equations of the exact U update ("ls" mode).

    ``A = sum_i a_i (w_i w_i^T) kron (X_i^T X_i)`` (dr, dr) and
    ``c = sum_i c_i vec(X_i^T (y_i - X_i b_i) w_i^T)`` (dr), with ``vec`` column-major
    (``vec(U)[a d + j] = U[j, a]``) and per-user weights ``a_i``, ``c_i`` (default 1).
    ``A`` is formed as one (r^2, n) x (n, d^2) product, never one user's dr x dr matrix.
    Called with a single user, it is that user's contribution ``(A_i, c_i)``.
    """
    n, d = stats.xty.shape
    r = W.shape[1]
    a = _weights(n, weights_A, W)
    c_w = _weights(n, weights_c, W)
    outer = (W.unsqueeze(2) * W.unsqueeze(1)).reshape(n, r * r) * a.unsqueeze(-1)
    A = (outer.T @ stats.xtx.reshape(n, d * d)).reshape(r, r, d, d).permute(0, 2, 1, 3).reshape(r * d, r * d)
    c = ((ls_part_vectors(stats, B) * c_w.unsqueeze(-1)).T @ W).T.reshape(r * d)
    return A, c


def ls_part_vectors(stats: UserStats, B: Tensor) -> Tensor:
    """``g_i = X_i^T (y_i - X_i b_i)`` (n, d): with ``w_i``, the factor of ``c_i = vec(g_i w_i^T)``."""
    return stats.xty - (stats.xtx @ B.unsqueeze(-1)).squeeze(-1)


def ls_solve(A: Tensor, c: Tensor, *, rank: int, normalizer: float, ridge: float) -> Tensor:
    """``U = QR(unvec((A / N + lam I)^{-1} c / N))`` with the column-major ``unvec`` (dr -> d x r).

    ``N`` is the normalizer (the expected number of contributors under privacy). The ridge is relative,
    ``lam = ridge tr(A / N) / (dr)`` (``ridge`` when that trace is not positive), so it means the same in any units.
    ``A`` is symmetrized first; the solve uses Cholesky, with a least-squares fallback
    when the (noised) system is not positive definite.
    """
    dr = A.shape[0]
    d = dr // rank
    system = (A + A.T) / (2 * normalizer)
    unit = float(torch.trace(system)) / dr
    system = system + ridge * (unit if unit > 0 else 1.0) * torch.eye(dr, dtype=A.dtype, device=A.device)
    rhs = (c / normalizer).unsqueeze(-1)
    L, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        u = torch.cholesky_solve(rhs, L)
    else:
        u = torch.linalg.lstsq(system, rhs).solution
    return orthonormalize(u.reshape(rank, d).T)


def gd_residual_vectors(stats: UserStats, U: Tensor, W: Tensor, B: Tensor) -> Tensor:
    """``e_i = (X_i^T X_i theta_i - X_i^T y_i) / m_i`` (n, d), ``theta_i = U w_i + b_i``.

    The user's gradient of its mean squared loss (halved) with respect to U is ``e_i w_i^T``.
    """
    theta = W @ U.T + B
    e = (stats.xtx @ theta.unsqueeze(-1)).squeeze(-1) - stats.xty
    return e / stats.count.clamp_min(1).unsqueeze(-1)


def gd_gradient_sum(residual_vectors: Tensor, W: Tensor, weights: Tensor | None = None) -> Tensor:
    """``sum_i omega_i e_i w_i^T`` (d, r); the user's contribution ``G_i = e_i w_i^T`` has norm ``||e_i|| ||w_i||``."""
    omega = _weights(W.shape[0], weights, W)
    return (residual_vectors * omega.unsqueeze(-1)).T @ W


def gd_step(U: Tensor, gradient_sum: Tensor, *, normalizer: float, learning_rate: float) -> Tensor:
    """``U <- QR(U - lr * G / N)`` with ``N`` the (expected) number of contributors."""
    return orthonormalize(U - learning_rate * gradient_sum / normalizer)


def unit_free_gradients(stats: UserStats, U: Tensor, W: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """Each user's gradient of U in its own curvature's units: ``(Delta_i, P_i)``, both free of the data's units.

    ``Delta_i = X_i^T (X_i theta_i - y_i) w_i^T / (c_i ||w_i||^2)`` (n, d, r) with
    ``theta_i = U w_i + b_i`` and ``c_i = tr(H_i) / (d - r)``, ``H_i = S_i - S_i U (U^T S_i U)^+ U^T S_i``
    (``S_i = X_i^T X_i``): the user's curvature of its loss in U, ``H_i kron w_i w_i^T`` on the
    directions that ``w_i`` can still move, taken as a scalar per unit of ``||w_i||^2``.
    ``P_i = w_i w_i^T / ||w_i||^2`` (n, r, r), trace 1: the direction of the user's curvature in R^r.
    Scaling X by a and y by b leaves both unchanged (``w`` scales by b/a, the residual by b,
    ``c_i`` by a^2), and ``U - (sum_i Delta_i)(sum_i P_i)^{-1}`` is a Newton step of
    ``sum_i ||y_i - X_i (U w_i + b_i)||^2`` under that Kronecker approximation of its Hessian.
    A user with ``w_i = 0`` or ``c_i = 0`` (at most r examples) contributes zeros.
    """
    d, r = U.shape[0], U.shape[1]
    V = stats.xtx @ U
    inner = torch.linalg.pinv(U.T @ V, hermitian=True)
    explained = (inner * (V.transpose(1, 2) @ V)).sum(dim=(1, 2))
    curvature = (torch.diagonal(stats.xtx, dim1=1, dim2=2).sum(dim=1) - explained).clamp_min(0) / max(d - r, 1)
    w_norm2 = W.square().sum(dim=1)
    scale = curvature * w_norm2
    theta = W @ U.T + B
    residual = (stats.xtx @ theta.unsqueeze(-1)).squeeze(-1) - stats.xty
    factor = torch.where(scale > 0, 1 / torch.where(scale > 0, scale, torch.ones_like(scale)), torch.zeros_like(scale))
    delta = (residual * factor.unsqueeze(-1)).unsqueeze(-1) * W.unsqueeze(1)
    w_unit = W * torch.where(w_norm2 > 0, w_norm2.rsqrt(), torch.zeros_like(w_norm2)).unsqueeze(-1)
    return delta, w_unit.unsqueeze(2) * w_unit.unsqueeze(1)


def preconditioned_step(U: Tensor, delta_sum: Tensor, curvature_sum: Tensor, *, normalizer: float, learning_rate: float = 1.0, floor: float = 0.05) -> Tensor:
    """``U <- QR(U - lr (D / N) (P / N)^{-1})`` with ``D = sum_i Delta_i`` (d, r) and ``P = sum_i P_i`` (r, r).

    ``P`` (noised, maybe indefinite) is symmetrized and its eigenvalues are floored at
    ``floor`` times the largest, so a direction few users move is not blown up by noise.
    """
    P = (curvature_sum + curvature_sum.T) / (2 * normalizer)
    values, vectors = torch.linalg.eigh(P)
    values = values.clamp_min(floor * max(float(values.max()), 1e-12))
    inverse = vectors @ torch.diag_embed(1 / values) @ vectors.T
    return orthonormalize(U - learning_rate * (delta_sum / normalizer) @ inverse)


def averaging_step(round_number: int, rounds: int) -> float:
    """Step factor of round t of T for the unit-free step: 1 for ``t <= T/2 + 1``, then ``1 / (t - floor(T/2))``.

    The first half of the rounds take full (near-Newton) steps; the later ones take steps 1/2, 1/3, ...,
    so U ends near the average of where those rounds would have put it (Polyak averaging) and not
    at the last round's draw of noise, or of the pull of heterogeneous users whose clipped mean does
    not vanish at the optimum. Public: depends on t and T only.
    """
    return 1.0 / max(1, round_number - rounds // 2)
