"""Logistic loss for binary labels: ``P(y = 1 | x) = sigmoid(x . theta_i)``.

The local step reuses the squared-loss solver of :mod:`fedlrs.core.local` through
iteratively reweighted least squares (Newton's method): with ``eta = X theta``,
``p = sigmoid(eta)``, weights ``s = p (1 - p)`` and working response
``z = eta + (y - p) / s``, one Newton step is the weighted least-squares fit of
``z`` on ``X`` with weights ``s``, here with the low-rank-plus-sparse structure.
"""

from __future__ import annotations

import torch

from .local import LocalFit, ridge_unit, solve_local
from .stats import UserData, sufficient_statistics

Tensor = torch.Tensor

_MIN_WEIGHT = 1e-6


def user_parameters(U: Tensor, fit: LocalFit) -> Tensor:
    """``theta_i = U w_i + b_i`` for every user, (n, d)."""
    return fit.w @ U.T + fit.b


def solve_local_logistic(
    U: Tensor,
    data: UserData,
    *,
    sparsity: int,
    ridge_w: float = 1e-2,
    ridge_b: float = 1e-2,
    iterations: int = 8,
    refine_steps: int = 2,
) -> LocalFit:
    """Fit ``w_i``, ``b_i`` under the logistic loss by ``iterations`` IRLS steps from ``theta = 0``.

    Each step solves ``min sum_j s_ij (z_ij - x_ij . (U w + b))^2 + u_i (ridge_w ||w||^2 + ridge_b ||b||^2)``
    over ``||b||_0 <= k`` with :func:`fedlrs.core.local.solve_local` on the weighted statistics, ``u_i = tr(X_i^T X_i) / (d m_i)``
    of the unweighted data (:func:`fedlrs.core.local.ridge_unit`): one penalized likelihood, the same in any units of X.
    """
    n = data.num_users
    units = ridge_unit(sufficient_statistics(data))
    fit = LocalFit(data.X.new_zeros(n, U.shape[1]), data.X.new_zeros(n, data.dim))
    for _ in range(iterations):
        eta = (data.X @ user_parameters(U, fit).unsqueeze(-1)).squeeze(-1)
        p = torch.sigmoid(eta)
        s = (p * (1 - p)).clamp_min(_MIN_WEIGHT)
        z = eta + (data.y - p) / s
        stats = sufficient_statistics(UserData(data.X, z, data.mask), weights=s)
        fit = solve_local(U, stats, sparsity=sparsity, ridge_w=ridge_w, ridge_b=ridge_b, refine_steps=refine_steps, ridge_units=units)
    return fit


def logistic_residual_vectors(data: UserData, theta: Tensor) -> Tensor:
    """``e_i = X_i^T (sigmoid(X_i theta_i) - y_i) / m_i`` (n, d): the user's U-gradient is ``e_i w_i^T``."""
    eta = (data.X @ theta.unsqueeze(-1)).squeeze(-1)
    r = (torch.sigmoid(eta) - data.y) * data.mask.to(data.X.dtype)
    e = (data.X.transpose(1, 2) @ r.unsqueeze(-1)).squeeze(-1)
    return e / data.counts.clamp_min(1).to(data.X.dtype).unsqueeze(-1)
