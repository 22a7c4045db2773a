"""The client's local step of AMHT-LRS: given the published U, fit ``w_i`` and ``b_i``.

For user i with statistics ``S = X^T X``, ``g = X^T y`` the local problem is

    min_{w, ||b||_0 <= k}  ||y - X U w - X b||^2 + lam_w ||w||^2 + lam_b ||b||^2.

``w`` is eliminated in closed form: with ``V = S U`` and ``G = U^T S U + lam_w I``,
``w(b) = G^{-1} (U^T g - V^T b)``, and the objective in ``b`` becomes the quadratic

    f(b) = const - 2 b^T h + b^T H b,   H = S - V G^{-1} V^T + lam_b I,   h = g - V G^{-1} U^T g,

i.e. least squares on the projection of the data onto the orthogonal complement
of ``X U``. The support of ``b`` is chosen greedily on that projected problem
(orthogonal matching pursuit from several first coordinates: add the
coordinate that lowers ``f`` most, keep the best run), ``b``
is re-fitted on its support, and ``w`` follows from ``w(b)``: a joint
least-squares fit of ``(w, b_S)``. Optional subspace-pursuit steps (join the k coordinates of
largest residual correlation, re-fit on 2k, keep the k largest) are kept only where they lower ``f``.
All of it works on batches of users and needs only the statistics, never
one user at a time in Python, and no QR of ``X_i U`` (Gram matrices and Cholesky).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .stats import UserStats

Tensor = torch.Tensor


@dataclass(frozen=True)
class LocalFit:
    """``w`` (n, r) and ``b`` (n, d, at most k non-zero per row) of a batch of users."""

    w: Tensor
    b: Tensor


class ProjectedGram:
    """``H = S - V G^{-1} V^T + lam_b I`` of a batch of users, never formed as (n, d, d).

    The support search needs only its diagonal, a few columns and small blocks;
    each is ``S``'s own entries minus a rank-r correction, O(n d s r) for s columns.
    """

    def __init__(self, xtx: Tensor, V: Tensor | None, K: Tensor | None, ridge_b: float):
        self.xtx, self.V, self.K, self.ridge_b = xtx, V, K, ridge_b

    def diagonal(self) -> Tensor:
        """``H_jj`` (n, d)."""
        diag = torch.diagonal(self.xtx, dim1=1, dim2=2) + self.ridge_b
        if self.V is not None:
            diag = diag - (self.V * self.K.transpose(1, 2)).sum(-1)
        return diag

    def columns(self, index: Tensor) -> Tensor:
        """``H[:, :, S]`` (n, d, s) for supports ``index`` (n, s)."""
        n, d = self.xtx.shape[:2]
        s = index.shape[1]
        out = self.xtx.gather(2, index.unsqueeze(1).expand(n, d, s))
        if self.V is not None:
            out = out - self.V @ self.K.gather(2, index.unsqueeze(1).expand(n, self.K.shape[1], s))
        return out.scatter_add(1, index.unsqueeze(1), torch.full_like(out[:, :1], self.ridge_b))

    def block(self, index: Tensor, columns: Tensor | None = None) -> Tensor:
        """``H_SS`` (n, s, s)."""
        columns = self.columns(index) if columns is None else columns
        return columns.gather(1, index.unsqueeze(-1).expand(-1, -1, index.shape[1]))


def _projected_problem(U: Tensor, stats: UserStats, ridge_w: float, ridge_b: float):
    """``H`` (as a :class:`ProjectedGram`), ``h`` (n, d) and the pieces to recover ``w(b)``."""
    d, r = U.shape
    if r == 0:
        return ProjectedGram(stats.xtx, None, None, ridge_b), stats.xty, None, 0
    V = stats.xtx @ U  # (n, d, r)
    G = U.T @ V + ridge_w * torch.eye(r, dtype=U.dtype, device=U.device)
    L, info = torch.linalg.cholesky_ex(G)
    if bool((info != 0).any()):
        raise ValueError(
            "U^T X_i^T X_i U + ridge_w I is not positive definite for some users: "
            f"set ridge_w > 0 (ridge_w == {ridge_w}) or give each user at least rank examples."
        )
    G_inv = torch.cholesky_inverse(L)
    K = G_inv @ V.transpose(1, 2)  # G^{-1} V^T, (n, r, d)
    Utg = stats.xty @ U  # (n, r)
    h = stats.xty - (K.transpose(1, 2) @ Utg.unsqueeze(-1)).squeeze(-1)
    return ProjectedGram(stats.xtx, V, K, ridge_b), h, (G_inv, V, Utg), r


def _coordinates(b: Tensor, pieces, r: int) -> Tensor:
    """``w(b) = G^{-1} (U^T g - V^T b)``."""
    if r == 0:
        return b.new_zeros(b.shape[0], 0)
    G_inv, V, Utg = pieces
    rhs = Utg - (V.transpose(1, 2) @ b.unsqueeze(-1)).squeeze(-1)
    return (G_inv @ rhs.unsqueeze(-1)).squeeze(-1)


def _fit_on_support(H: ProjectedGram, h: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
    """``b_S = H_SS^{-1} h_S`` for supports ``index`` (n, s); returns ``b_S`` and ``H[:, :, S]``."""
    columns = H.columns(index)
    values = torch.linalg.solve(H.block(index, columns), h.gather(1, index).unsqueeze(-1)).squeeze(-1)
    return values, columns


def _residual(h: Tensor, columns: Tensor, values: Tensor) -> Tensor:
    """``h - H b`` for the sparse ``b`` with values ``b_S`` and columns ``H[:, :, S]``, in O(n d s)."""
    return h - (columns @ values.unsqueeze(-1)).squeeze(-1)


def _objective(h: Tensor, index: Tensor, values: Tensor) -> Tensor:
    """``f(b) - const = b^T H b - 2 b^T h = -b_S^T h_S`` at the least-squares ``b_S`` of support S."""
    return -(values * h.gather(1, index)).sum(-1)


def _dense(index: Tensor, values: Tensor, d: int) -> Tensor:
    return values.new_zeros(values.shape[0], d).scatter(1, index, values)


def _keep_better(current: tuple, candidate: tuple) -> tuple:
    """Per user, the (index, values, columns, objective) run with the lower objective."""
    better = candidate[-1] < current[-1]
    return tuple(torch.where(better.view(-1, *([1] * (c.ndim - 1))), new, c) for c, new in zip(current, candidate))


def greedy_support(H: ProjectedGram, h: Tensor, sparsity: int, *, starts: int = 8) -> tuple[Tensor, Tensor]:
    """Multi-start orthogonal matching pursuit on ``f(b) = b^T H b - 2 b^T h``.

    Returns supports (n, k) and least-squares values on them (n, k). One step
    scores coordinate j by ``c_j^2 / H_jj`` with the residual correlation
    ``c = h - H b`` (the decrease of ``f`` from moving ``b_j`` alone), adds the best
    unused one and re-fits. Each of the ``starts`` runs is forced to begin with one
    of the ``starts`` best-scoring coordinates; the run with the lowest ``f`` wins.
    """
    n, d = h.shape
    diag = H.diagonal().clamp_min(torch.finfo(h.dtype).tiny)
    firsts = (h * h / diag).topk(min(starts, d), dim=1).indices
    best = None
    for first in firsts.unbind(dim=1):
        index = first.unsqueeze(1)
        values, columns = _fit_on_support(H, h, index)
        for _ in range(sparsity - 1):
            residual = _residual(h, columns, values)
            score = (residual * residual / diag).scatter(1, index, -1.0)
            index = torch.cat([index, score.argmax(dim=1, keepdim=True)], dim=1)
            values, columns = _fit_on_support(H, h, index)
        run = (index, values, columns, _objective(h, index, values))
        best = run if best is None else _keep_better(best, run)
    return best[0], best[1], best[2]


def _subspace_pursuit(H: ProjectedGram, h: Tensor, index: Tensor, values: Tensor, columns: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """Refine supports: join the k best new coordinates, re-fit on 2k, keep the k largest, re-fit.

    A step is kept, per user, only where it lowers ``f`` (Dai and Milenkovic 2009).
    """
    n, d = h.shape
    sparsity = index.shape[1]
    width = min(2 * sparsity, d)
    scale = H.diagonal().clamp_min(torch.finfo(h.dtype).tiny).sqrt()
    best = (index, values, columns, _objective(h, index, values))
    for _ in range(steps):
        index, values, columns = best[:3]
        score = (_residual(h, columns, values).abs() / scale).scatter(1, index, float("inf"))
        wide_index = score.topk(width, dim=1).indices
        wide_values, _ = _fit_on_support(H, h, wide_index)
        keep = (wide_values.abs() * scale.gather(1, wide_index)).topk(sparsity, dim=1).indices
        new_index = wide_index.gather(1, keep)
        new_values, new_columns = _fit_on_support(H, h, new_index)
        best = _keep_better(best, (new_index, new_values, new_columns, _objective(h, new_index, new_values)))
    return best[0], best[1]


def solve_local(
    U: Tensor,
    stats: UserStats,
    *,
    sparsity: int,
    ridge_w: float = 1e-6,
    ridge_b: float = 1e-6,
    refine_steps: int = 2,
    starts: int = 8,
) -> LocalFit:
    """Fit ``w_i`` and the k-sparse ``b_i`` of every user in ``stats`` for a fixed ``U`` (d, r).

    See the module docstring for the formulas. The support comes from a
    ``starts``-fold multi-start greedy search, then ``refine_steps`` subspace-pursuit
    steps, each kept only where it lowers ``f``.
    """
    d, r = U.shape
    if stats.dim != d:
        raise ValueError(f"U has {d} rows, must match the data's dimension {stats.dim}.")
    if not 0 <= sparsity < d:
        raise ValueError(f"sparsity == {sparsity}, must be in [0, {d}) for dimension {d}.")
    H, h, pieces, r = _projected_problem(U, stats, ridge_w, ridge_b)
    if sparsity == 0:
        b = torch.zeros_like(h)
    else:
        index, values, columns = greedy_support(H, h, sparsity, starts=starts)
        index, values = _subspace_pursuit(H, h, index, values, columns, refine_steps)
        b = _dense(index, values, d)
    return LocalFit(_coordinates(b, pieces, r), b)
