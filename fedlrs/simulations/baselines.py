"""Baselines on the same core solver: every one is ``solve_local`` with a fixed U or the engine with a fixed shape.

- global: one ``theta`` for all users, ridge (or logistic IRLS) on the pooled data (U = I_d, one pooled "user");
- local only: per-user ridge (U = I_d, no sparse part);
- low rank only (FedRep's model): AMHT-LRS with k = 0;
- sparse only: ``theta_i = b_i`` with ``||b_i||_0 <= k`` (U with no columns);
- oracle: the local step with the true ``U*``.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from fedlrs.core import LocalFit, UserStats, solve_local, solve_local_logistic, user_parameters
from fedlrs.core.stats import UserData, sufficient_statistics

from .engine import EngineConfig, EngineResult, run_engine

Tensor = torch.Tensor


def _identity(d: int, like: Tensor) -> Tensor:
    return torch.eye(d, dtype=like.dtype, device=like.device)


def pooled(stats: UserStats) -> UserStats:
    """The statistics of all users' examples as one user: ``sum_i X_i^T X_i``, ``sum_i X_i^T y_i``, ..."""
    return UserStats(stats.xtx.sum(0, keepdim=True), stats.xty.sum(0, keepdim=True), stats.yty.sum(0, keepdim=True), stats.count.sum(0, keepdim=True))


def global_model(data: UserData, *, ridge: float = 1e-6) -> Tensor:
    """``theta = (sum_i X_i^T X_i + ridge I)^{-1} sum_i X_i^T y_i``, the same for every user (n, d)."""
    stats = sufficient_statistics(data)
    fit = solve_local(_identity(data.dim, data.X), pooled(stats), sparsity=0, ridge_w=ridge)
    return fit.w.expand(data.num_users, -1).clone()


def global_logistic(data: UserData, *, ridge: float = 1e-2) -> Tensor:
    """One logistic model for all users: IRLS on the pooled examples (U = I_d, no sparse part), (n, d)."""
    pooled_data = UserData(data.X.reshape(1, -1, data.dim), data.y.reshape(1, -1), data.mask.reshape(1, -1))
    theta = solve_local_logistic(_identity(data.dim, data.X), pooled_data, sparsity=0, ridge_w=ridge).w
    return theta.expand(data.num_users, -1).clone()


def local_only(data: UserData, *, ridge: float = 1e-2) -> Tensor:
    """Per-user ridge ``theta_i = (X_i^T X_i + ridge I)^{-1} X_i^T y_i`` (n, d)."""
    return solve_local(_identity(data.dim, data.X), sufficient_statistics(data), sparsity=0, ridge_w=ridge).w


def sparse_only(data: UserData, *, sparsity: int, ridge: float = 1e-6) -> LocalFit:
    """``theta_i = b_i``, the best k-sparse least-squares fit per user (U has no columns)."""
    empty = data.X.new_zeros(data.dim, 0)
    return solve_local(empty, sufficient_statistics(data), sparsity=sparsity, ridge_b=ridge)


def oracle(data: UserData, U_star: Tensor, *, sparsity: int) -> Tensor:
    """The local step with the true subspace: ``theta_i = U* w_i + b_i`` (n, d)."""
    U = U_star.to(dtype=data.X.dtype, device=data.X.device)
    return user_parameters(U, solve_local(U, sufficient_statistics(data), sparsity=sparsity))


def low_rank_only(data: UserData, config: EngineConfig, **kwargs) -> EngineResult:
    """AMHT-LRS with no sparse part (k = 0): the model of FedRep (Collins et al. 2021)."""
    return run_engine(data, replace(config, sparsity=0), **kwargs)
