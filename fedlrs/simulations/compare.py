"""LRS against its baselines on one synthetic federation: one table of the same metrics."""

from __future__ import annotations

import torch

from fedlrs.core import mean_relative_error, mean_user_auc, mean_user_mse, principal_angle_distance, support_f1

from . import baselines
from .engine import EngineConfig, run_engine
from fedlrs.data.synthetic import SyntheticLRS


def storage_per_user(method: str, *, dim: int, rank: int, sparsity: int) -> int:
    """Numbers kept per user: ``r + 2k`` for LRS (values and indices of ``b``), ``d`` for a dense local model."""
    return {
        "lrs": rank + 2 * sparsity,
        "low-rank only": rank,
        "sparse only": 2 * sparsity,
        "local only": dim,
        "global": 0,
        "oracle (U* known)": rank + 2 * sparsity,
    }[method]


def compare_methods(data: SyntheticLRS, config: EngineConfig, *, logistic: bool = False) -> list[dict]:
    """Run LRS, low rank only, sparse only, local only, global and the oracle; one row of metrics each.

    Rows: method, relative_error, distance (subspace methods), support_f1 (sparse methods),
    test_mse (or test_auc for logistic data), storage (numbers per user).
    """
    train, test = data.train.to(dtype=config.torch_dtype), data.test.to(dtype=config.torch_dtype)
    theta_star = data.theta_star.to(dtype=config.torch_dtype)
    dims = dict(dim=train.dim, rank=config.rank, sparsity=config.sparsity)
    rows = []

    def row(method: str, theta: torch.Tensor, U=None, B=None) -> None:
        entry = {"method": method, "relative_error": mean_relative_error(theta, theta_star)}
        entry["distance"] = principal_angle_distance(U, data.U_star.to(U.dtype)) if U is not None else None
        entry["support_f1"] = support_f1(B, data.B_star.to(B.dtype)) if B is not None else None
        if logistic:
            entry["test_auc"] = mean_user_auc(test, theta)
        else:
            entry["test_mse"] = mean_user_mse(test, theta)
        entry["storage"] = storage_per_user(method, **dims)
        rows.append(entry)

    lrs = run_engine(train, config)
    row("lrs", lrs.theta, lrs.U, lrs.fit.b if config.sparsity else None)
    low = baselines.low_rank_only(train, config)
    row("low-rank only", low.theta, low.U)
    if logistic:
        row("global", baselines.global_logistic(train, ridge=config.ridge_w))
        return rows
    if config.sparsity:
        sparse = baselines.sparse_only(train, sparsity=config.sparsity)
        row("sparse only", sparse.b, B=sparse.b)
    row("local only", baselines.local_only(train))
    row("global", baselines.global_model(train))
    row("oracle (U* known)", baselines.oracle(train, data.U_star, sparsity=config.sparsity))
    return rows
