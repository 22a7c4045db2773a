"""AMHT-LRS with multi-hot (sparse) features: per-user cost in the user's rows times their non-zeros, never in d.

A rating's features ``x_ij`` are a sparse row of ``d`` (e.g. the item's one-hot id and its
genre indicators) with at most ``z`` non-zeros. The model of a rating is that of
:mod:`.sparse` with ``x`` in place of the one-hot item,

    y_ij ~ o + a_i + x_ij . (c + U w_i + b_i),

published ``P = [U, c]`` (d, r + 1), on the device ``w_i``, the user bias ``a_i`` and the
k-sparse ``b_i`` (on the features the user's rows touch). A user's data live on its *local
features* ``J_i`` (the distinct features of its rows, ``f_i <= m_i z``): its rows are stored
as local column positions and values (:class:`FeatureStats`), and ``X_i v``, ``X_i^T u``
are gathers and scatters, O(m z) each. Nothing forms ``X_i^T X_i`` (f x f), let alone (d, d).

- Local step (:func:`solve_local_features`): with the local design ``D = [X P_J[:, :r], 1]``
  (m, r + 1) and the target ``g = y - o - X c_J``, ``G = D^T D + diag(lam_w, .., lam_a)``,
  ``V = X^T D``, the projected problem of :mod:`.local` ``H = X^T X - V G^{-1} V^T + lam_b I``,
  ``h = X^T g - V G^{-1} D^T g``, and its greedy/subspace-pursuit support search over ``J_i``;
  a row of ``H`` costs O(m z + f r). For one-hot rows this is :func:`.sparse.solve_local_items`.
- "gd" parts (:func:`feature_contributions`): ``G_i = e_i w'_i^T`` with ``e_i = X_i^T (p_i - y_i)``
  on ``J_i``, scattered into (d, r + 1).
- "ls" parts: the exact system ``sum_i (w'_i w'_i^T) kron X_i^T X_i`` couples features that
  share a row, so it no longer decouples per feature (and is (d r')^2). Instead each round
  takes the *majorized* block step: with ``X^T X <= Dg := diag(sum_l nnz_l x_l * x_l)``
  (Cauchy-Schwarz on a row of ``nnz_l`` non-zeros), ``M_j = sum_i (X_i^T X_i-bound)_jj w'_i w'_i^T
  + Lam`` is one (r+1) x (r+1) block per feature and ``P_j <- P_j - M_j^{-1} (G_j + Lam P_j)``
  (:func:`majorized_step`) never raises the ridge-regularized loss; for one-hot rows
  (``nnz = 1``) it *is* the exact alternating least squares step of :func:`.sparse.item_solve`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .local import ProjectedGram, _coordinates, _subspace_pursuit, greedy_support
from .sparse import ItemFit, ItemStats, _scatter_items, extended_coordinates, item_solve, length_groups, ridge_vector

Tensor = torch.Tensor


@dataclass(frozen=True)
class FeatureStats:
    """Per-user sparse rows on the user's local features, padded to ``m`` rows, ``z`` non-zeros and ``f`` features.

    ``features`` (n, f) long: global ids of the local features (``feature_mask`` (n, f): real slots,
    packed left); ``columns`` (n, m, z) long: each non-zero's local position; ``values`` (n, m, z)
    (padding 0); ``ratings`` (n, m) and ``mask`` (n, m) bool (real rows, packed left); ``num_features``: d.
    ``count`` and ``total`` (the rows and their ratings, (n, m)) and ``num_items`` are named as in
    :class:`.sparse.ItemStats`, so a round loop reads both.
    """

    features: Tensor
    feature_mask: Tensor
    columns: Tensor
    values: Tensor
    ratings: Tensor
    mask: Tensor
    num_features: int

    def __post_init__(self) -> None:
        n, m = self.ratings.shape
        if self.columns.shape != self.values.shape or self.columns.shape[:2] != (n, m) or self.mask.shape != (n, m) \
                or self.features.shape != self.feature_mask.shape or self.features.shape[0] != n:
            raise ValueError(f"features {tuple(self.features.shape)}, columns {tuple(self.columns.shape)}, values {tuple(self.values.shape)}, "
                             f"ratings {tuple(self.ratings.shape)}, mask {tuple(self.mask.shape)}: must be (n, f), (n, m, z), (n, m, z), (n, m), (n, m).")
        if self.features.numel() and (int(self.features.min()) < 0 or int(self.features.max()) >= self.num_features):
            raise ValueError(f"feature ids must be in [0, {self.num_features}), found [{int(self.features.min())}, {int(self.features.max())}].")
        if self.columns.numel() and (int(self.columns.min()) < 0 or int(self.columns.max()) >= max(self.features.shape[1], 1)):
            raise ValueError(f"local columns must be in [0, {self.features.shape[1]}).")

    @property
    def num_users(self) -> int:
        return self.ratings.shape[0]

    @property
    def num_items(self) -> int:
        """d (the name :class:`.sparse.ItemStats` gives it)."""
        return self.num_features

    @property
    def count(self) -> Tensor:
        """1 on a real row, 0 on padding (n, m)."""
        return self.mask.to(self.ratings.dtype)

    @property
    def total(self) -> Tensor:
        """The ratings, 0 on padding (n, m)."""
        return self.ratings * self.count

    @property
    def num_ratings(self) -> Tensor:
        return self.count.sum(dim=1)

    def select(self, index) -> "FeatureStats":
        """The users at ``index`` (an index or bool tensor over users, or a slice)."""
        return FeatureStats(self.features[index], self.feature_mask[index], self.columns[index], self.values[index], self.ratings[index], self.mask[index],
                            self.num_features)

    def trimmed(self, index: Tensor) -> "FeatureStats":
        """The users at ``index``, padded only to their own largest ``m_i`` and ``f_i``."""
        part = self.select(index)
        m = max(int(part.mask.sum(1).max()), 1) if len(index) else 1
        f = max(int(part.feature_mask.sum(1).max()), 1) if len(index) else 1
        return FeatureStats(part.features[:, :f], part.feature_mask[:, :f], part.columns[:, :m], part.values[:, :m], part.ratings[:, :m], part.mask[:, :m],
                            self.num_features)


def feature_statistics(users, indptr, columns, values, ratings, *, num_users: int, num_features: int, dtype=torch.float64) -> FeatureStats:
    """:class:`FeatureStats` from CSR rows (``indptr``, ``columns``, ``values``), the user and rating of each row, without a loop over users.

    Every row needs at least one non-zero, no repeated column, ids in ``[0, d)`` and finite values;
    anything else is refused with the row it concerns.
    """
    users, indptr, columns = (np.asarray(a, dtype=np.int64) for a in (users, indptr, columns))
    values, ratings = np.asarray(values, dtype=float), np.asarray(ratings, dtype=float)
    rows = len(ratings)
    if users.shape != (rows,) or indptr.shape != (rows + 1,) or columns.shape != values.shape or columns.ndim != 1 or int(indptr[-1]) != len(columns) \
            or indptr[0] != 0:
        raise ValueError(f"users {users.shape}, indptr {indptr.shape}, columns {columns.shape}, values {values.shape}, ratings {ratings.shape}: "
                         "must be (rows,), (rows + 1,) from 0 to nnz, (nnz,), (nnz,), (rows,).")
    width = np.diff(indptr)
    if (width < 0).any():
        raise ValueError("indptr must be non-decreasing.")
    if (width == 0).any():
        raise ValueError(f"row {int(np.argmax(width == 0))} has no non-zero feature; every row needs at least one.")
    if len(columns) and (columns.min() < 0 or columns.max() >= num_features):
        bad = int(np.argmax((columns < 0) | (columns >= num_features)))
        raise ValueError(f"feature id {int(columns[bad])} in row {int(np.searchsorted(indptr, bad, side='right') - 1)}, must be in [0, {num_features}).")
    if rows and (users.min() < 0 or users.max() >= num_users):
        raise ValueError(f"user ids must be in [0, {num_users}).")
    if not (np.isfinite(values).all() and np.isfinite(ratings).all()):
        raise ValueError("values and ratings must be finite.")
    row_of = np.repeat(np.arange(rows), width)
    order = np.lexsort((columns, row_of))
    repeated = (np.diff(row_of[order]) == 0) & (np.diff(columns[order]) == 0)
    if repeated.any():
        raise ValueError(f"row {int(row_of[order][1:][repeated][0])} has feature {int(columns[order][1:][repeated][0])} twice; sum duplicates first.")
    # rows of each user, packed left
    row_order = np.argsort(users, kind="stable")
    per_user = np.bincount(users, minlength=num_users)
    row_position = np.empty(rows, dtype=np.int64)
    row_position[row_order] = np.arange(rows) - np.concatenate([[0], np.cumsum(per_user)[:-1]])[users[row_order]]
    # local features of each user: the distinct (user, feature) pairs, packed left
    pair = users[row_of] * num_features + columns
    unique, inverse = np.unique(pair, return_inverse=True)
    pair_user, pair_feature = unique // num_features, unique % num_features
    per_user_features = np.bincount(pair_user, minlength=num_users)
    local = np.arange(len(unique)) - np.concatenate([[0], np.cumsum(per_user_features)[:-1]])[pair_user]
    n, m = num_users, max(int(per_user.max()) if rows else 0, 1)
    z, f = max(int(width.max()) if rows else 0, 1), max(int(per_user_features.max()) if len(unique) else 0, 1)
    out_features, out_feature_mask = np.zeros((n, f), dtype=np.int64), np.zeros((n, f), dtype=bool)
    out_features[pair_user, local], out_feature_mask[pair_user, local] = pair_feature, True
    slot = np.arange(len(columns)) - indptr[row_of]
    out_columns, out_values = np.zeros((n, m, z), dtype=np.int64), np.zeros((n, m, z))
    out_columns[users[row_of], row_position[row_of], slot] = local[inverse]
    out_values[users[row_of], row_position[row_of], slot] = values
    out_ratings, out_mask = np.zeros((n, m)), np.zeros((n, m), dtype=bool)
    out_ratings[users, row_position], out_mask[users, row_position] = ratings, True
    t = dict(dtype=dtype)
    return FeatureStats(torch.as_tensor(out_features), torch.as_tensor(out_feature_mask), torch.as_tensor(out_columns), torch.as_tensor(out_values, **t),
                        torch.as_tensor(out_ratings, **t), torch.as_tensor(out_mask), num_features)


def feature_buckets(stats: FeatureStats, *, ratio: float = 2.0) -> list[tuple[Tensor, FeatureStats]]:
    """The users grouped by their number of rows ``m_i`` (:func:`.sparse.length_groups`), each group trimmed to its own largest ``m_i`` and ``f_i``."""
    return [(index, stats.trimmed(index)) for index in length_groups(stats.mask.sum(1), ratio=ratio)]


def apply_rows(stats: FeatureStats, v: Tensor) -> Tensor:
    """``X_i v_i`` (n, m, q) for ``v`` (n, f, q) on the local features: a gather, O(m z q)."""
    n, m, z = stats.columns.shape
    q = v.shape[-1]
    gathered = v.gather(1, stats.columns.reshape(n, m * z, 1).expand(-1, -1, q)).reshape(n, m, z, q)
    return (stats.values.unsqueeze(-1) * gathered).sum(2)


def apply_transpose(stats: FeatureStats, u: Tensor) -> Tensor:
    """``X_i^T u_i`` (n, f, q) for ``u`` (n, m, q): a scatter onto the local features, O(m z q)."""
    n, m, z = stats.columns.shape
    q = u.shape[-1]
    source = (stats.values.unsqueeze(-1) * u.unsqueeze(2)).reshape(n, m * z, q)
    out = u.new_zeros(n, stats.features.shape[1], q)
    return out.scatter_add_(1, stats.columns.reshape(n, m * z, 1).expand(-1, -1, q), source)


class FeatureProjectedGram(ProjectedGram):
    """``H = X^T X - V G^{-1} V^T + lam_b I`` on a user's local features, from its rows: ``X^T X`` is never formed."""

    def __init__(self, stats: FeatureStats, V: Tensor, K: Tensor, ridge_b: float):
        super().__init__(None, V, K, ridge_b)
        self.stats = stats

    def gram_diagonal(self) -> Tensor:
        """``(X^T X)_jj = sum_l x_lj^2`` (n, f)."""
        return row_weighted_squares(self.stats, None)

    def gram_rows(self, index: Tensor) -> Tensor:
        """``(X^T X)[index, :]`` (n, s, f): the columns ``X e_j`` (n, s, m), then ``X^T`` of each; O(s m z)."""
        st = self.stats
        n, m, z = st.columns.shape
        s = index.shape[1]
        hit = st.columns.unsqueeze(1) == index.view(n, s, 1, 1)  # (n, s, m, z)
        column = (hit * st.values.unsqueeze(1)).sum(-1)  # (n, s, m)
        source = (st.values.unsqueeze(1) * column.unsqueeze(-1)).reshape(n, s, m * z)
        out = st.values.new_zeros(n, s, st.features.shape[1])
        return out.scatter_add_(2, st.columns.reshape(n, 1, m * z).expand(-1, s, -1), source)


def row_weighted_squares(stats: FeatureStats, row_weights: Tensor | None) -> Tensor:
    """``sum_l omega_l x_lj^2`` (n, f) on the local features (``omega`` (n, m); None: 1): the diagonal of ``X^T diag(omega) X``."""
    n, m, z = stats.columns.shape
    squares = stats.values.square() if row_weights is None else stats.values.square() * row_weights.unsqueeze(-1)
    out = stats.values.new_zeros(n, stats.features.shape[1])
    return out.scatter_add_(1, stats.columns.reshape(n, m * z), squares.reshape(n, m * z))


def _design(P: Tensor, stats: FeatureStats, offset: float) -> tuple[Tensor, Tensor]:
    """``D = [X P_J[:, :r], 1]`` (n, m, r + 1) and the target ``g = y - o - X c_J`` (n, m), both 0 on padded rows."""
    XP = apply_rows(stats, P[stats.features])  # (n, m, r + 1)
    real = stats.count
    design = torch.cat([XP[..., :-1], real.unsqueeze(-1)], dim=-1)
    return design, (stats.ratings - offset - XP[..., -1]) * real


def solve_local_features(
    P: Tensor, stats: FeatureStats, *, offset: float, sparsity: int, ridge_w: float, ridge_b: float, ridge_bias: float | None = None,
    refine_steps: int = 2, starts: int = 4,
) -> ItemFit:
    """``(w_i, a_i)`` and the k-sparse ``b_i`` on the local features, for the published ``P = [U, c]`` (d, r + 1).

    ``min ||g - D (w, a) - X b||^2 + lam_w ||w||^2 + lam_a a^2 + lam_b ||b||^2`` with ``D = [X U_J, 1]`` and
    ``g = y - o - X c_J`` (module docstring): ``w(b) = G^{-1} (D^T g - V^T b)``, ``b`` from the greedy search of
    :mod:`.local` on ``H``, ``h``. ``b_items`` of the result are global feature ids. Work and memory:
    O(n (m z (r + k) + f (r + k))), independent of d.
    """
    if sparsity < 0:
        raise ValueError(f"sparsity == {sparsity}, must be >= 0.")
    if sparsity > 0 and ridge_b <= 0:
        raise ValueError(f"ridge_b == {ridge_b}, must be > 0 when sparsity > 0 (padded features need it).")
    n, f = stats.features.shape
    D, g = _design(P, stats, offset)
    rw = D.shape[-1]
    G = D.transpose(1, 2) @ D + torch.diag(ridge_vector(rw, ridge_w, ridge_bias, like=P))
    L, info = torch.linalg.cholesky_ex(G)
    if bool((info != 0).any()):
        raise ValueError(f"D^T D + ridge_w I is not positive definite for some users: set ridge_w > 0 (ridge_w == {ridge_w}).")
    G_inv = torch.cholesky_inverse(L)
    V = apply_transpose(stats, D)  # X^T D (n, f, r + 1)
    K = G_inv @ V.transpose(1, 2)
    Dg = (D.transpose(1, 2) @ g.unsqueeze(-1)).squeeze(-1)
    h = apply_transpose(stats, g.unsqueeze(-1)).squeeze(-1) - (K.transpose(1, 2) @ Dg.unsqueeze(-1)).squeeze(-1)
    k = min(sparsity, f - 1)
    if k <= 0:
        index, values = stats.features.new_zeros(n, 0), h.new_zeros(n, 0)
    else:
        H = FeatureProjectedGram(stats, V, K, ridge_b)
        index, values, rows = greedy_support(H, h, k, starts=min(starts, f))
        index, values = _subspace_pursuit(H, h, index, values, rows, refine_steps)
    b_local = h.new_zeros(n, f).scatter(1, index, values)
    coordinates = _coordinates(b_local, (G_inv, V, Dg), rw)
    return ItemFit(coordinates[:, :-1], coordinates[:, -1], stats.features.gather(1, index), values)


def feature_predictions(P: Tensor, fit: ItemFit, stats: FeatureStats, *, offset: float) -> Tensor:
    """``o + a_i + x_ij . (c + U w_i + b_i)`` (n, m) for every row of ``stats`` (padded rows: ``o + a_i``)."""
    theta_J = P[stats.features] @ extended_coordinates(fit.w).unsqueeze(-1)  # (n, f, 1)
    theta_J = theta_J + (fit.b_on(stats.features) * stats.feature_mask).unsqueeze(-1)
    return offset + fit.user_bias.unsqueeze(-1) + apply_rows(stats, theta_J).squeeze(-1)


def _feature_view(stats: FeatureStats, per_feature: Tensor) -> ItemStats:
    """The local features as an :class:`ItemStats` (ids and a per-feature statistic), to scatter onto the d features."""
    return ItemStats(stats.features, per_feature, per_feature, stats.num_features)


def feature_contributions(P: Tensor, fit: ItemFit, stats: FeatureStats, *, offset: float, mode: str, weights: Tensor | None = None) -> dict[str, Tensor]:
    """The summed parts of the users in ``stats``: ``G = sum_i omega_i e_i w'_i^T`` (d, r') with ``e_i = X_i^T (p_i - y_i)``
    and, in mode "ls", the majorizer blocks ``A_j = sum_i (sum_l nnz_il x_ilj^2) w'_i w'_i^T`` (d, r', r').

    ``weights`` (n, m) in {0, 1} keeps a subset of each user's rows (default: all).
    """
    if mode not in ("ls", "gd"):
        raise ValueError(f"mode == {mode!r}, must be 'ls' or 'gd'.")
    keep = stats.count if weights is None else stats.count * weights
    w_ext = extended_coordinates(fit.w)
    residual = (feature_predictions(P, fit, stats, offset=offset) - stats.ratings) * keep
    e = apply_transpose(stats, residual.unsqueeze(-1)).squeeze(-1)  # (n, f)
    parts = {"G": _scatter_items(_feature_view(stats, e), e.unsqueeze(-1) * w_ext.unsqueeze(1))}
    if mode == "ls":
        nonzeros = (stats.values != 0).sum(-1).to(keep.dtype) * keep
        bound = row_weighted_squares(stats, nonzeros)  # (n, f): sum_l nnz_l x_lj^2
        outer = w_ext.unsqueeze(2) * w_ext.unsqueeze(1)
        parts["A"] = _scatter_items(_feature_view(stats, bound), bound.unsqueeze(-1).unsqueeze(-1) * outer.unsqueeze(1))
    return parts


def majorized_step(P: Tensor, A: Tensor, G: Tensor, *, normalizer: float, ridge: float, ridge_bias: float | None = None) -> Tensor:
    """``P_j <- P_j - (A_j + Lam)^{-1} (G_j + Lam P_j)`` for every feature j, ``Lam = diag(lam, .., lam, lam_bias)``.

    ``A_j`` the majorizer blocks and ``G`` the gradient sum of :func:`feature_contributions` (the
    ``1 / N`` cancels; ``normalizer`` keeps the units of :func:`.sparse.item_solve`, which solves each block).
    The ridge-regularized squared loss never rises; with one-hot rows it is the exact per-item least squares.
    """
    lam = ridge_vector(P.shape[1], ridge, ridge_bias, like=P)
    return P - item_solve(A, G + P * lam, normalizer=normalizer, ridge=ridge, ridge_bias=ridge_bias)
