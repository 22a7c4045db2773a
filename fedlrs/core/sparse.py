"""AMHT-LRS with one-hot item features: matrix completion whose per-user cost scales with the user's ratings.

With ``x_ij`` the one-hot vector of item ``j`` among ``d`` items, ``theta_i`` holds one
number per item and ``X_i^T X_i`` is diagonal: ``S_i = diag(s_i)`` with ``s_ij`` the
number of ratings user i gave item j. Nothing here forms a (d, d) matrix or a
dense (n, d) array: a user's statistics live on the items it rated (:class:`ItemStats`),
batches are grouped by length so a user is padded to less than twice its ratings
(:func:`length_buckets`), and only the rows ``U_J`` of its rated items are read. The model of a rating is

    y_ij ~ o + a_i + c_j + U_j . w_i + b_ij

with a public offset ``o``, the user's bias ``a_i``, ``w_i`` (r) and the k-sparse
``b_i`` (on rated items: ``b_ij`` is identifiable only where user i rated item j) kept
on the device, and the published item factors ``U`` (d, r) and item biases ``c`` (d).
The item bias is a column of the published matrix ``P = [U, c]`` (d, r + 1) whose
user coordinate is fixed to 1 (``w'_i = [w_i, 1]``); the user bias is the
coordinate of a constant column ``1`` in the local design ``Z_i = [U_J, 1]``.

- Local step (:func:`solve_local_items`): the dense solver of :mod:`.local` on the
  projected problem restricted to the rated items, ``H = S - V G^{-1} V^T + lam_b I``
  with ``V = S Z``, ``G = Z^T S Z + lam_w I``: the same greedy/subspace-pursuit
  support search, with ``S`` diagonal (:class:`DiagonalProjectedGram`).
- "ls" update (:func:`item_normal_equations`, :func:`item_solve`): ``A = sum_i (w'_i
  w'_i^T) kron S_i`` is block diagonal, one (r+1) x (r+1) block per item, so the exact
  update decouples into alternating least squares,
  ``P_j = (sum_{i rated j} s_ij w'_i w'_i^T + lam I)^{-1} sum_i w'_i e_ij``,
  ``e_ij = sum_l (y_ijl - o - a_i - b_ij)`` (the sums of the user's ratings of j).
- "gd" update (:func:`item_gradient_sum`): the gradient rows ``(s_ij p_ij - t_ij) w'_i``
  on the user's rated items only, summed into (d, r + 1) with ``index_add``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .local import ProjectedGram, _coordinates, _subspace_pursuit, greedy_support

Tensor = torch.Tensor


@dataclass(frozen=True)
class ItemStats:
    """Per-user rating statistics on the rated items, padded to ``m_max`` items.

    ``items`` (n, m) long: item ids (padding: item 0 with ``count`` 0);
    ``count`` (n, m): ``s_ij``, the number of ratings of item j by user i;
    ``total`` (n, m): ``t_ij``, the sum of those ratings; ``num_items``: d.
    ``X_i^T X_i = diag(s_i)`` and ``X_i^T y_i = t_i`` on these items, zero elsewhere.
    """

    items: Tensor
    count: Tensor
    total: Tensor
    num_items: int

    def __post_init__(self) -> None:
        if self.items.ndim != 2 or self.count.shape != self.items.shape or self.total.shape != self.items.shape:
            raise ValueError(f"items, count, total have shapes {tuple(self.items.shape)}, {tuple(self.count.shape)}, {tuple(self.total.shape)}; must all be (users, m_max).")
        if self.items.numel() and (int(self.items.min()) < 0 or int(self.items.max()) >= self.num_items):
            raise ValueError(f"item ids must be in [0, {self.num_items}), found [{int(self.items.min())}, {int(self.items.max())}].")

    @property
    def num_users(self) -> int:
        return self.items.shape[0]

    @property
    def num_ratings(self) -> Tensor:
        """``m_i = sum_j s_ij`` (n,)."""
        return self.count.sum(dim=1)

    def select(self, index) -> "ItemStats":
        """The users at ``index`` (an index or bool tensor over users, or a slice)."""
        return ItemStats(self.items[index], self.count[index], self.total[index], self.num_items)

    def with_weights(self, weights: Tensor) -> "ItemStats":
        """Statistics of a subset of each user's rated items: ``s_ij w_ij``, ``t_ij w_ij`` (``weights`` (n, m) in {0, 1})."""
        return ItemStats(self.items, self.count * weights, self.total * weights, self.num_items)


def length_groups(width: Tensor, *, ratio: float = 2.0) -> list[Tensor]:
    """The users' indices grouped by their length ``width`` (n,): a group holds lengths in ``[l, ratio * l)``, shortest first."""
    if ratio <= 1:
        raise ValueError(f"ratio == {ratio}, must be > 1.")
    order = torch.argsort(width, stable=True)
    sorted_width = width[order]
    groups, start = [], 0
    while start < len(order):
        low = max(int(sorted_width[start]), 1)
        end = max(int(torch.searchsorted(sorted_width, torch.tensor(math.ceil(ratio * low)), right=False)), start + 1)
        groups.append(order[start:end])
        start = end
    return groups


def length_buckets(stats: ItemStats, *, ratio: float = 2.0) -> list[tuple[Tensor, ItemStats]]:
    """The users grouped by their number of rated items ``m_i``: ``(index, stats)`` per group.

    A group holds users with ``m_i`` in ``[l, ratio * l)`` (:func:`length_groups`) and its statistics are trimmed
    to its largest ``m_i`` (the items are packed to the left), so a user's share of a
    batched step is padded to less than ``ratio * m_i``, not to the batch's ``m_max``.
    """
    width = (stats.count > 0).sum(1)
    groups = []
    for index in length_groups(width, ratio=ratio):
        m = max(int(width[index].max()), 1)
        groups.append((index, ItemStats(stats.items[index, :m], stats.count[index, :m], stats.total[index, :m], stats.num_items)))
    return groups


def item_statistics(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, *, num_users: int, num_items: int, dtype=torch.float64) -> ItemStats:
    """:class:`ItemStats` from a long table of (user, item, rating) rows, without a Python loop over users.

    Repeated (user, item) rows are summed into ``s_ij`` and ``t_ij``. Users without
    rows get an all-padding row (their ``m_i`` is 0).
    """
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    ratings = np.asarray(ratings, dtype=float)
    if not (users.shape == items.shape == ratings.shape) or users.ndim != 1:
        raise ValueError(f"users, items, ratings have shapes {users.shape}, {items.shape}, {ratings.shape}; must be equal and 1-d.")
    if len(users) and (users.min() < 0 or users.max() >= num_users or items.min() < 0 or items.max() >= num_items):
        raise ValueError(f"user ids must be in [0, {num_users}) and item ids in [0, {num_items}).")
    pair = users * num_items + items
    unique, inverse = np.unique(pair, return_inverse=True)
    count = np.bincount(inverse, minlength=len(unique)).astype(float)
    total = np.bincount(inverse, weights=ratings, minlength=len(unique))
    pair_user, pair_item = unique // num_items, unique % num_items
    per_user = np.bincount(pair_user, minlength=num_users)
    starts = np.concatenate([[0], np.cumsum(per_user)[:-1]])
    position = np.arange(len(unique)) - starts[pair_user]
    m_max = max(int(per_user.max()) if num_users else 0, 1)
    out_items = np.zeros((num_users, m_max), dtype=np.int64)
    out_count = np.zeros((num_users, m_max))
    out_total = np.zeros((num_users, m_max))
    out_items[pair_user, position] = pair_item
    out_count[pair_user, position] = count
    out_total[pair_user, position] = total
    return ItemStats(torch.as_tensor(out_items), torch.as_tensor(out_count, dtype=dtype), torch.as_tensor(out_total, dtype=dtype), num_items)


@dataclass(frozen=True)
class ItemFit:
    """A batch of users' personal state: ``w`` (n, r), ``user_bias`` (n,), ``b`` as ``b_items`` (n, k) ids and ``b_values`` (n, k)."""

    w: Tensor
    user_bias: Tensor
    b_items: Tensor
    b_values: Tensor

    def b_on(self, items: Tensor) -> Tensor:
        """``b_ij`` for the item ids ``items`` (n, m): the value where j is in the user's support, else 0."""
        hit = items.unsqueeze(-1) == self.b_items.unsqueeze(1)  # (n, m, k)
        return (hit * self.b_values.unsqueeze(1)).sum(-1)


class DiagonalProjectedGram(ProjectedGram):
    """``H = diag(s) - V G^{-1} V^T + lam_b I`` on a user's rated items: ``S`` is diagonal, never (m, m)."""

    def __init__(self, count: Tensor, V: Tensor, K: Tensor, ridge_b: float):
        super().__init__(None, V, K, ridge_b)
        self.count = count

    def gram_diagonal(self) -> Tensor:
        return self.count

    def gram_rows(self, index: Tensor) -> Tensor:
        n, s = index.shape
        rows = self.count.new_zeros(n, s, self.count.shape[1])
        return rows.scatter(2, index.unsqueeze(-1), self.count.gather(1, index).unsqueeze(-1))


def local_design(P: Tensor, stats: ItemStats) -> Tensor:
    """``Z_i = [U_J, 1]`` (n, m, r + 1): the factor rows of the user's rated items and the user-bias column."""
    U_J = P[:, :-1][stats.items]
    return torch.cat([U_J, U_J.new_ones(*U_J.shape[:2], 1)], dim=-1)


def solve_local_items(
    P: Tensor, stats: ItemStats, *, offset: float, sparsity: int, ridge_w: float, ridge_b: float, ridge_bias: float | None = None, refine_steps: int = 2,
    starts: int = 4,
) -> ItemFit:
    """``(w_i, a_i)`` and the k-sparse ``b_i`` on the rated items, for the published ``P = [U, c]`` (d, r + 1).

    ``min ||t - Z (w, a) - b||^2_S + lam_w ||w||^2 + lam_a a^2 + lam_b ||b||^2`` with
    ``Z = [U_J, 1]`` and the targets ``y_ij - o - c_j`` (``lam_a`` = ``ridge_bias``, default
    ``ridge_w``): the projected problem of :mod:`.local` (``V = S Z``, ``G = Z^T S Z + diag(lam_w, .., lam_a)``, ``h = g - V G^{-1} Z^T g``,
    ``g = t - s (o + c_J)``) with its greedy support search over the user's m rated
    items. Work and memory are O(n m (r + k)), independent of d.
    """
    if sparsity < 0:
        raise ValueError(f"sparsity == {sparsity}, must be >= 0.")
    if sparsity > 0 and ridge_b <= 0:
        raise ValueError(f"ridge_b == {ridge_b}, must be > 0 when sparsity > 0 (padded items need it).")
    n, m = stats.items.shape
    Z = local_design(P, stats)
    rw = Z.shape[-1]
    g = stats.total - stats.count * (offset + P[:, -1][stats.items])  # X^T (y - o - c)
    V = stats.count.unsqueeze(-1) * Z  # (n, m, r + 1)
    G = Z.transpose(1, 2) @ V + torch.diag(ridge_vector(rw, ridge_w, ridge_bias, like=P))
    L, info = torch.linalg.cholesky_ex(G)
    if bool((info != 0).any()):
        raise ValueError(f"Z^T S Z + ridge_w I is not positive definite for some users: set ridge_w > 0 (ridge_w == {ridge_w}).")
    G_inv = torch.cholesky_inverse(L)
    K = G_inv @ V.transpose(1, 2)  # (n, r + 1, m)
    Zg = (Z.transpose(1, 2) @ g.unsqueeze(-1)).squeeze(-1)
    h = g - (K.transpose(1, 2) @ Zg.unsqueeze(-1)).squeeze(-1)
    k = min(sparsity, m - 1)
    if k <= 0:
        index = stats.items.new_zeros(n, 0)
        values = h.new_zeros(n, 0)
    else:
        H = DiagonalProjectedGram(stats.count, V, K, ridge_b)
        index, values, rows = greedy_support(H, h, k, starts=min(starts, m))
        index, values = _subspace_pursuit(H, h, index, values, rows, refine_steps)
    b_local = h.new_zeros(n, m).scatter(1, index, values)
    coordinates = _coordinates(b_local, (G_inv, V, Zg), rw)
    return ItemFit(coordinates[:, :-1], coordinates[:, -1], stats.items.gather(1, index), values)


def rating_predictions(P: Tensor, fit: ItemFit, items: Tensor, *, offset: float) -> Tensor:
    """``o + a_i + c_j + U_j . w_i + b_ij`` for the item ids ``items`` (n, m) of each user."""
    rows = P[items]  # (n, m, r + 1)
    return offset + fit.user_bias.unsqueeze(-1) + rows[..., -1] + (rows[..., :-1] * fit.w.unsqueeze(1)).sum(-1) + fit.b_on(items)


def extended_coordinates(w: Tensor) -> Tensor:
    """``w'_i = [w_i, 1]`` (n, r + 1): the coordinate 1 multiplies the item bias column of ``P``."""
    return torch.cat([w, w.new_ones(w.shape[0], 1)], dim=1)


def item_residual_totals(P: Tensor, fit: ItemFit, stats: ItemStats, *, offset: float) -> Tensor:
    """``e_ij = t_ij - s_ij (o + a_i + b_ij)`` (n, m): the right-hand side of item j's least squares, per user."""
    return stats.total - stats.count * (offset + fit.user_bias.unsqueeze(-1) + fit.b_on(stats.items))


def item_contribution_norms(w_ext: Tensor, stats: ItemStats, residual: Tensor) -> tuple[Tensor, Tensor]:
    """``(||A_i||_F, ||c_i||)`` of the "ls" parts, never formed: ``||w'_i||^2 ||s_i||`` and ``||w'_i|| ||e_i||``."""
    w_norm = w_ext.norm(dim=1)
    return w_norm.square() * stats.count.norm(dim=1), w_norm * residual.norm(dim=1)


def _scatter_items(stats: ItemStats, per_rating: Tensor) -> Tensor:
    """``out[j] = sum_{i, l: items[i, l] = j} per_rating[i, l]`` (d, *rest)."""
    flat = per_rating.reshape(-1, *per_rating.shape[2:])
    out = per_rating.new_zeros(stats.num_items, *per_rating.shape[2:])
    return out.index_add_(0, stats.items.reshape(-1), flat)


def item_normal_equations(w_ext: Tensor, stats: ItemStats, residual: Tensor, *, weights_A: Tensor | None = None, weights_c: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The block-diagonal "ls" system: ``A_j = sum_i alpha_i s_ij w'_i w'_i^T`` (d, r', r') and ``c_j = sum_i gamma_i e_ij w'_i`` (d, r').

    ``alpha_i``, ``gamma_i`` are per-user weights (clipping factors; default 1). Called
    with one user it is that user's contribution ``(A_i, c_i)``, restricted to the diagonal
    blocks (the off-diagonal blocks of ``(w' w'^T) kron S_i`` are zero for one-hot features).
    """
    n, rw = w_ext.shape
    alpha = w_ext.new_ones(n) if weights_A is None else weights_A
    gamma = w_ext.new_ones(n) if weights_c is None else weights_c
    outer = (w_ext.unsqueeze(2) * w_ext.unsqueeze(1)) * alpha.view(n, 1, 1)  # (n, r', r')
    A = _scatter_items(stats, stats.count.unsqueeze(-1).unsqueeze(-1) * outer.unsqueeze(1))
    c = _scatter_items(stats, (residual * gamma.unsqueeze(-1)).unsqueeze(-1) * w_ext.unsqueeze(1))
    return A, c


def ridge_vector(size: int, ridge: float, ridge_bias: float | None, *, like: Tensor) -> Tensor:
    """``(lam, .., lam, lam_bias)`` (size,): the ridge of the factor coordinates and of the bias coordinate (default ``lam``)."""
    out = like.new_full((size,), float(ridge))
    out[-1] = ridge if ridge_bias is None else ridge_bias
    return out


def item_solve(A: Tensor, c: Tensor, *, normalizer: float, ridge: float, ridge_bias: float | None = None) -> Tensor:
    """``P_j = (A_j / N + Lam / N)^{-1} c_j / N`` for every item, ``Lam = diag(lam, .., lam, lam_bias)`` in rating units.

    ``A_j`` is symmetrized and projected onto the positive semidefinite cone (its
    negative eigenvalues, which only noise creates, set to 0) before the ridge is
    added, so every item's system is positive definite.
    """
    if ridge <= 0 or (ridge_bias is not None and ridge_bias <= 0):
        raise ValueError(f"ridge == {ridge}, ridge_bias == {ridge_bias}; must be > 0 (an item nobody rated has A_j = 0).")
    sym = (A + A.transpose(1, 2)) / (2 * normalizer)
    values, vectors = torch.linalg.eigh(sym)
    psd = (vectors * values.clamp_min(0).unsqueeze(1)) @ vectors.transpose(1, 2)
    system = psd + torch.diag(ridge_vector(A.shape[-1], ridge, ridge_bias, like=A)) / normalizer
    return torch.linalg.solve(system, (c / normalizer).unsqueeze(-1)).squeeze(-1)


def item_gradient_rows(P: Tensor, fit: ItemFit, stats: ItemStats, *, offset: float) -> Tensor:
    """``e_ij = s_ij p_ij - t_ij`` (n, m), ``p_ij`` the prediction: user i's gradient of ``||y_i - X_i theta_i||^2 / 2`` in ``P_j`` is ``e_ij w'_i``."""
    return stats.count * rating_predictions(P, fit, stats.items, offset=offset) - stats.total


def item_gradient_sum(w_ext: Tensor, stats: ItemStats, rows: Tensor, weights: Tensor | None = None) -> Tensor:
    """``sum_i omega_i e_i w'_i^T`` (d, r') from the sparse rows ``e_i`` (n, m); user i's part has norm ``||e_i|| ||w'_i||``."""
    omega = w_ext.new_ones(w_ext.shape[0]) if weights is None else weights
    return _scatter_items(stats, (rows * omega.unsqueeze(-1)).unsqueeze(-1) * w_ext.unsqueeze(1))


def item_gd_step(P: Tensor, gradient_sum: Tensor, *, normalizer: float, learning_rate: float, ridge: float, ridge_bias: float | None = None) -> Tensor:
    """``P <- P - lr (G + P Lam) / N``: a gradient step on the ridge-regularized loss (no QR: the ridges fix the scale)."""
    return P - learning_rate * (gradient_sum + P * ridge_vector(P.shape[1], ridge, ridge_bias, like=P)) / normalizer
