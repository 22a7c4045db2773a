"""Metrics of recovered subspaces, parameters and per-user predictions."""

from __future__ import annotations

import torch

from .stats import UserData

Tensor = torch.Tensor


def principal_angle_distance(U: Tensor, U_star: Tensor) -> float:
    """``||(I - U* U*^T) U||_2``: the sine of the largest principal angle between the spans (both orthonormal)."""
    residual = U - U_star @ (U_star.T @ U)
    return float(torch.linalg.matrix_norm(residual, ord=2))


def mean_relative_error(theta: Tensor, theta_star: Tensor) -> float:
    """``mean_i ||theta_i - theta*_i||^2 / ||theta*_i||^2`` over users (rows)."""
    num = (theta - theta_star).pow(2).sum(dim=1)
    den = theta_star.pow(2).sum(dim=1).clamp_min(torch.finfo(theta.dtype).tiny)
    return float((num / den).mean())


def support_f1(B: Tensor, B_star: Tensor) -> float:
    """F1 score of the recovered supports of ``b`` pooled over all (user, coordinate) pairs.

    Returns 1.0 when both supports are empty.
    """
    found, true = B != 0, B_star != 0
    tp = float((found & true).sum())
    fp = float((found & ~true).sum())
    fn = float((~found & true).sum())
    if tp + fp + fn == 0:
        return 1.0
    return 2 * tp / (2 * tp + fp + fn)


def predictions(data: UserData, theta: Tensor) -> Tensor:
    """``x_ij . theta_i`` for every (padded) example, (n, m_max)."""
    return (data.X @ theta.unsqueeze(-1)).squeeze(-1)


def per_user_mse(data: UserData, theta: Tensor) -> Tensor:
    """``(1/m_i) sum_j (y_ij - x_ij . theta_i)^2`` per user (n,); NaN for a user with no examples."""
    mask = data.mask.to(data.X.dtype)
    sq = (data.y - predictions(data, theta)).pow(2) * mask
    return sq.sum(dim=1) / mask.sum(dim=1)


def mean_user_mse(data: UserData, theta: Tensor) -> float:
    """Mean over users (with at least one example) of the per-user test MSE."""
    return float(per_user_mse(data, theta).nanmean())


def per_user_auc(data: UserData, scores: Tensor) -> Tensor:
    """Per-user ROC AUC ``P(s_pos > s_neg) + P(s_pos = s_neg) / 2`` (n,); NaN where a user has one class only.

    Computed from all (positive, negative) pairs of a user at once, (n, m, m).
    """
    mask = data.mask
    pos = (data.y > 0.5) & mask
    neg = (data.y <= 0.5) & mask
    diff = scores.unsqueeze(2) - scores.unsqueeze(1)  # [i, a, b] = s_a - s_b
    pair = (pos.unsqueeze(2) & neg.unsqueeze(1)).to(scores.dtype)
    wins = ((diff > 0).to(scores.dtype) + 0.5 * (diff == 0).to(scores.dtype)) * pair
    n_pairs = pair.sum(dim=(1, 2))
    return torch.where(n_pairs > 0, wins.sum(dim=(1, 2)) / n_pairs.clamp_min(1), torch.full_like(n_pairs, float("nan")))


def mean_user_auc(data: UserData, theta: Tensor) -> float:
    """Mean per-user AUC of the scores ``x . theta_i`` over users that have both classes."""
    return float(per_user_auc(data, predictions(data, theta)).nanmean())
