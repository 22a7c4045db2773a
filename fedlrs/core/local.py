"""The client's local step of AMHT-LRS: given the published U, fit ``w_i`` and ``b_i``.

For user i with statistics ``S = X^T X``, ``g = X^T y`` the local problem is

    min_{w, ||b||_0 <= k}  ||y - X U w - X b||^2 + lam_w ||w||^2 + lam_b ||b||^2,

with ridges in the units of the user's own features, ``lam = ridge * tr(S) / (d m)`` (:func:`ridge_unit`, the
mean squared entry of ``X``; 1 for standardized features, so a ridge keeps its usual meaning): the fit is the
same in any units of X and y (``w`` and ``b`` scale by the units of y over those of X).
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

#: users per chunk of the local solve on a CPU: small enough for a chunk's search state to stay in cache
DEFAULT_CPU_CHUNK = 4096


@dataclass(frozen=True)
class LocalFit:
    """``w`` (n, r) and ``b`` (n, d, at most k non-zero per row) of a batch of users."""

    w: Tensor
    b: Tensor


class ProjectedGram:
    """``H = S - V G^{-1} V^T + lam_b I`` of a batch of users, never formed as (n, d, d).

    The support search needs only its diagonal and a few rows (``H`` is symmetric,
    so rows are columns); each row is a contiguous row of ``S`` minus a rank-r
    correction, O(n d r) per row.
    """

    def __init__(self, xtx: Tensor, V: Tensor | None, K: Tensor | None, ridge_b: float | Tensor):
        self.xtx, self.V, self.K, self.ridge_b = xtx, V, K, ridge_b  # a number, or one per user (n,)
        self._Vt = None if V is None else V.transpose(1, 2).contiguous()  # (n, r, d)

    def gram_diagonal(self) -> Tensor:
        """``S_jj`` (n, d)."""
        return torch.diagonal(self.xtx, dim1=1, dim2=2)

    def gram_rows(self, index: Tensor) -> Tensor:
        """``S[:, index, :]`` (n, s, d)."""
        n, d = self.xtx.shape[:2]
        flat = (torch.arange(n, device=index.device).unsqueeze(1) * d + index).reshape(-1)
        return self.xtx.reshape(n * d, d).index_select(0, flat).reshape(n, index.shape[1], d)

    def diagonal(self) -> Tensor:
        """``H_jj`` (n, d)."""
        ridge = self.ridge_b.unsqueeze(-1) if isinstance(self.ridge_b, Tensor) else self.ridge_b
        diag = self.gram_diagonal() + ridge
        if self.V is not None:
            diag = diag - (self.V * self.K.transpose(1, 2)).sum(-1)
        return diag

    def rows(self, index: Tensor) -> Tensor:
        """``H[:, S, :]`` (n, s, d) for supports ``index`` (n, s)."""
        n, s = index.shape
        out = self.gram_rows(index)
        if self.V is not None:
            K_S = self.K.gather(2, index.unsqueeze(1).expand(n, self.K.shape[1], s))  # (n, r, s)
            if s <= 2:  # elementwise beats tiny bmm batches on a CPU
                out = out - (K_S.unsqueeze(-1) * self._Vt.unsqueeze(2)).sum(1)
            else:
                out = out - K_S.transpose(1, 2) @ self._Vt
        if isinstance(self.ridge_b, Tensor):
            ridge = self.ridge_b.to(out.dtype).view(n, 1, 1).expand(n, s, 1)
        else:
            ridge = torch.full_like(out[:, :, :1], self.ridge_b)
        return out.scatter_add(2, index.unsqueeze(-1), ridge)

    @staticmethod
    def block(index: Tensor, rows: Tensor) -> Tensor:
        """``H_SS`` (n, s, s) from the rows ``H[:, S, :]``."""
        return rows.gather(2, index.unsqueeze(1).expand(-1, index.shape[1], -1))


def ridge_unit(stats: UserStats) -> Tensor:
    """The unit of each user's ridges, ``tr(S_i) / (d m_i)`` (n,): the mean squared entry of ``X_i`` (1 where it is 0).

    ``lam_i = ridge * tr(S_i) / (d m_i)`` scales with the features as ``S_i / m_i`` does, so a ridge means the
    same in any units of X and, like a plain ridge, weighs less as a user's examples grow (1 for standardized
    features: the plain ridge; a user with no examples keeps the bare ``ridge``, all its sums being 0).
    """
    energy = torch.diagonal(stats.xtx, dim1=-2, dim2=-1).sum(-1)
    unit = energy / (stats.xtx.shape[-1] * stats.count.to(energy.dtype).clamp_min(1))
    return torch.where(unit > 0, unit, torch.ones_like(unit))


def _projected_problem(U: Tensor, stats: UserStats, ridge_w: float, ridge_b: float, unit: Tensor | None = None):
    """``H`` (as a :class:`ProjectedGram`), ``h`` (n, d) and the pieces to recover ``w(b)``; ridges times ``unit`` (n,)
    (default :func:`ridge_unit`)."""
    d, r = U.shape
    unit = ridge_unit(stats) if unit is None else unit
    if r == 0:
        return ProjectedGram(stats.xtx, None, None, ridge_b * unit), stats.xty, None, 0
    V = stats.xtx @ U  # (n, d, r)
    G = U.T @ V + (ridge_w * unit).view(-1, 1, 1) * torch.eye(r, dtype=U.dtype, device=U.device)
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
    return ProjectedGram(stats.xtx, V, K, ridge_b * unit), h, (G_inv, V, Utg), r


def _coordinates(b: Tensor, pieces, r: int) -> Tensor:
    """``w(b) = G^{-1} (U^T g - V^T b)``."""
    if r == 0:
        return b.new_zeros(b.shape[0], 0)
    G_inv, V, Utg = pieces
    rhs = Utg - (V.transpose(1, 2) @ b.unsqueeze(-1)).squeeze(-1)
    return (G_inv @ rhs.unsqueeze(-1)).squeeze(-1)


def _solve_on_support(h: Tensor, index: Tensor, rows: Tensor) -> Tensor:
    """``b_S = H_SS^{-1} h_S`` for supports ``index`` (n, s) with their rows ``H[:, S, :]``."""
    return torch.linalg.solve(ProjectedGram.block(index, rows), h.gather(1, index).unsqueeze(-1)).squeeze(-1)


def _residual(h: Tensor, rows: Tensor, values: Tensor) -> Tensor:
    """``h - H b`` for the sparse ``b`` with values ``b_S`` and rows ``H[:, S, :]``, in O(n d s)."""
    return h - (rows * values.unsqueeze(-1)).sum(1)


def _objective(h: Tensor, index: Tensor, values: Tensor) -> Tensor:
    """``f(b) - const = b^T H b - 2 b^T h = -b_S^T h_S`` at the least-squares ``b_S`` of support S."""
    return -(values * h.gather(1, index)).sum(-1)


def _dense(index: Tensor, values: Tensor, d: int) -> Tensor:
    return values.new_zeros(values.shape[0], d).scatter(1, index, values)


def _keep_better(current: tuple, candidate: tuple) -> tuple:
    """Per user, the (index, values, rows, objective) run with the lower objective."""
    better = candidate[-1] < current[-1]
    return tuple(torch.where(better.view(-1, *([1] * (c.ndim - 1))), new, c) for c, new in zip(current, candidate))


def greedy_support(H: ProjectedGram, h: Tensor, sparsity: int, *, starts: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    """Multi-start orthogonal matching pursuit on ``f(b) = b^T H b - 2 b^T h``.

    Returns supports (n, k), least-squares values on them (n, k) and their rows of
    ``H`` (n, k, d). One step scores coordinate j by ``c_j^2 / H_jj`` with the
    residual correlation ``c = h - H b`` (the decrease of ``f`` from moving ``b_j``
    alone), adds the best unused one and re-fits. Each of the ``starts`` runs is
    forced to begin with one of the ``starts`` best-scoring coordinates; the run
    with the lowest ``f`` wins.
    """
    n, d = h.shape
    diag = H.diagonal().clamp_min(torch.finfo(h.dtype).tiny)
    firsts = (h * h / diag).topk(min(starts, d), dim=1).indices
    first_rows = H.rows(firsts)
    best = None
    for start in range(firsts.shape[1]):
        index, rows = firsts[:, start : start + 1], first_rows[:, start : start + 1]
        values = _solve_on_support(h, index, rows)
        for _ in range(sparsity - 1):
            residual = _residual(h, rows, values)
            score = (residual * residual / diag).scatter(1, index, -1.0)
            chosen = score.argmax(dim=1, keepdim=True)
            index = torch.cat([index, chosen], dim=1)
            rows = torch.cat([rows, H.rows(chosen)], dim=1)
            values = _solve_on_support(h, index, rows)
        run = (index, values, rows, _objective(h, index, values))
        best = run if best is None else _keep_better(best, run)
    return best[0], best[1], best[2]


def _subspace_pursuit(H: ProjectedGram, h: Tensor, index: Tensor, values: Tensor, rows: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """Refine supports: join the k best new coordinates, re-fit on 2k, keep the k largest, re-fit.

    A step is kept, per user, only where it lowers ``f`` (Dai and Milenkovic 2009).
    """
    n, d = h.shape
    sparsity = index.shape[1]
    width = min(2 * sparsity, d)
    scale = H.diagonal().clamp_min(torch.finfo(h.dtype).tiny).sqrt()
    best = (index, values, rows, _objective(h, index, values))
    for _ in range(steps):
        index, values, rows = best[:3]
        score = (_residual(h, rows, values).abs() / scale).scatter(1, index, float("inf"))
        wide_index = score.topk(width, dim=1).indices
        wide_rows = H.rows(wide_index)
        wide_values = _solve_on_support(h, wide_index, wide_rows)
        keep = (wide_values.abs() * scale.gather(1, wide_index)).topk(sparsity, dim=1).indices
        new_index = wide_index.gather(1, keep)
        new_rows = wide_rows.gather(1, keep.unsqueeze(-1).expand(-1, -1, d))
        new_values = _solve_on_support(h, new_index, new_rows)
        best = _keep_better(best, (new_index, new_values, new_rows, _objective(h, new_index, new_values)))
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
    chunk_size: int | None = None,
    ridge_units: Tensor | None = None,
) -> LocalFit:
    """Fit ``w_i`` and the k-sparse ``b_i`` of every user in ``stats`` for a fixed ``U`` (d, r).

    See the module docstring for the formulas. The support comes from a
    ``starts``-fold multi-start greedy search, then ``refine_steps`` subspace-pursuit
    steps, each kept only where it lowers ``f``.

    The penalties are ``ridge_w u_i ||w||^2`` and ``ridge_b u_i ||b||^2`` with ``u_i = ridge_units[i]``, by default
    :func:`ridge_unit` of the user's statistics (the same fit in any units; ones: absolute ridges).

    ``chunk_size`` users are solved at a time (views, no copies); the default
    keeps a chunk's working set in the CPU caches and solves all users at once
    on an accelerator.
    """
    d, r = U.shape
    if stats.dim != d:
        raise ValueError(f"U has {d} rows, must match the data's dimension {stats.dim}.")
    if not 0 <= sparsity < d:
        raise ValueError(f"sparsity == {sparsity}, must be in [0, {d}) for dimension {d}.")
    n = stats.num_users
    chunk = chunk_size or (DEFAULT_CPU_CHUNK if U.device.type == "cpu" else n)
    if n > chunk:
        fits = [
            solve_local(U, stats.select(slice(i, i + chunk)), sparsity=sparsity, ridge_w=ridge_w, ridge_b=ridge_b, refine_steps=refine_steps, starts=starts, chunk_size=chunk,
                        ridge_units=None if ridge_units is None else ridge_units[i:i + chunk])
            for i in range(0, n, chunk)
        ]
        return LocalFit(torch.cat([f.w for f in fits]), torch.cat([f.b for f in fits]))
    H, h, pieces, r = _projected_problem(U, stats, ridge_w, ridge_b, ridge_units)
    if sparsity == 0:
        b = torch.zeros_like(h)
    else:
        index, values, rows = greedy_support(H, h, sparsity, starts=starts)
        index, values = _subspace_pursuit(H, h, index, values, rows, refine_steps)
        b = _dense(index, values, d)
    return LocalFit(_coordinates(b, pieces, r), b)
