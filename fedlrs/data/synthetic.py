"""The Gaussian data model of the LRS paper (DESIGN.md section 6).

``x ~ N(0, I_d)``, ``theta*_i = U* w*_i + b*_i`` with ``U*`` a random orthonormal
(d, r) matrix, ``w*_i ~ N(0, I_r)``, ``b*_i`` with k non-zero entries on a random
support drawn ``N(0, sparse_scale^2)``; regression ``y = x . theta*_i + N(0, sigma^2)``,
classification ``y ~ Bernoulli(sigmoid(x . theta*_i))``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from fedlrs.core import (LocalFit, mean_relative_error, mean_user_auc, mean_user_mse, principal_angle_distance,
                         support_f1, user_parameters)
from fedlrs.core.stats import UserData
from fedlrs.core.subspace import random_orthonormal

Tensor = torch.Tensor


@dataclass(frozen=True)
class SyntheticLRS:
    """A synthetic federation: per-user train and test data and the true parameters."""

    train: UserData
    test: UserData
    U_star: Tensor
    W_star: Tensor
    B_star: Tensor

    @property
    def theta_star(self) -> Tensor:
        """``theta*_i = U* w*_i + b*_i`` (n, d)."""
        return self.W_star @ self.U_star.T + self.B_star


def _check(name: str, value: int, low: int) -> None:
    if value < low:
        raise ValueError(f"{name} == {value}, must be >= {low}.")


def make_lrs_data(
    *,
    users: int,
    examples: int,
    dim: int,
    rank: int,
    sparsity: int,
    noise: float = 0.01,
    examples_max: int | None = None,
    test_examples: int = 20,
    sparse_scale: float = 1.0,
    logistic: bool = False,
    unit_weights: bool = False,
    features: str = "gaussian",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
    U_star: Tensor | None = None,
) -> SyntheticLRS:
    """Draw a federation from the Gaussian LRS model.

    User i gets ``m_i = examples`` training examples, or ``m_i ~ Uniform{examples..examples_max}``
    when ``examples_max`` is given (padded with a mask), and ``test_examples`` test examples
    from the same distribution: the per-user train/test split. ``unit_weights``: ``w*_i`` scaled
    to unit norm (the Private FedRep protocol of Jain et al. 2021). ``features``: ``"gaussian"``
    (``x ~ N(0, I)``) or ``"uniform"`` (coordinates uniform on [-sqrt 3, sqrt 3], unit variance).
    ``U_star`` (dim, rank, orthonormal) fixes the shared subspace instead of drawing it (chunks of one federation drawn apart share it).
    """
    if features not in ("gaussian", "uniform"):
        raise ValueError(f"features == {features!r}, must be 'gaussian' or 'uniform'.")
    _check("users", users, 1)
    _check("examples", examples, 1)
    _check("dim", dim, 1)
    _check("rank", rank, 0)
    _check("sparsity", sparsity, 0)
    _check("test_examples", test_examples, 1)
    if rank > dim:
        raise ValueError(f"rank == {rank}, must be <= dim == {dim}.")
    if sparsity >= dim:
        raise ValueError(f"sparsity == {sparsity}, must be < dim == {dim}.")
    if examples_max is not None and examples_max < examples:
        raise ValueError(f"examples_max == {examples_max}, must be >= examples == {examples}.")
    if not 0 <= noise < float("inf"):  # also refuses NaN
        raise ValueError(f"noise == {noise}, must be a finite number >= 0.")
    if not 0 <= sparse_scale < float("inf"):
        raise ValueError(f"sparse_scale == {sparse_scale}, must be a finite number >= 0.")
    gen = torch.Generator().manual_seed(seed)
    if U_star is None:
        U_star = random_orthonormal(dim, rank, generator=gen, dtype=torch.float64)
    elif U_star.shape != (dim, rank):
        raise ValueError(f"U_star has shape {tuple(U_star.shape)}, must be {(dim, rank)}.")
    U_star = U_star.to(torch.float64)
    W_star = torch.randn(users, rank, generator=gen, dtype=torch.float64)
    if unit_weights:
        W_star = W_star / W_star.norm(dim=1, keepdim=True).clamp_min(1e-12)
    B_star = torch.zeros(users, dim, dtype=torch.float64)
    if sparsity:
        support = torch.rand(users, dim, generator=gen).argsort(dim=1)[:, :sparsity]
        B_star.scatter_(1, support, sparse_scale * torch.randn(users, sparsity, generator=gen, dtype=torch.float64))
    theta = W_star @ U_star.T + B_star

    def draw(m_max: int, counts: Tensor) -> UserData:
        if features == "uniform":
            X = (torch.rand(users, m_max, dim, generator=gen, dtype=torch.float64) * 2 - 1) * 3**0.5
        else:
            X = torch.randn(users, m_max, dim, generator=gen, dtype=torch.float64)
        eta = (X @ theta.unsqueeze(-1)).squeeze(-1)
        if logistic:
            y = (torch.rand(users, m_max, generator=gen, dtype=torch.float64) < torch.sigmoid(eta)).to(torch.float64)
        else:
            y = eta + noise * torch.randn(users, m_max, generator=gen, dtype=torch.float64)
        mask = torch.arange(m_max).unsqueeze(0) < counts.unsqueeze(1)
        X = X * mask.unsqueeze(-1)
        y = y * mask
        return UserData(X, y, mask).to(device=device, dtype=dtype)

    if examples_max is None:
        counts = torch.full((users,), examples)
    else:
        counts = torch.randint(examples, examples_max + 1, (users,), generator=gen)
    train = draw(int(counts.max()), counts)
    test = draw(test_examples, torch.full((users,), test_examples))
    to = dict(device=device, dtype=dtype)
    return SyntheticLRS(train, test, U_star.to(**to), W_star.to(**to), B_star.to(**to))


def split_rows_per_user(group_index: np.ndarray, *, test_fraction: float, seed: int) -> np.ndarray:
    """A boolean test mask over rows: ``round(test_fraction * m_i)`` random rows of each user (at least one kept for training)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction == {test_fraction}, must be in (0, 1).")
    rng = np.random.default_rng(seed)
    group_index = np.asarray(group_index)
    key = rng.random(len(group_index))
    order = np.lexsort((key, group_index))
    counts = np.bincount(group_index)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank_in_group = np.empty(len(group_index), dtype=np.int64)
    rank_in_group[order] = np.arange(len(group_index)) - starts[group_index[order]]
    n_test = np.minimum(np.round(test_fraction * counts).astype(np.int64), counts - 1)
    return rank_in_group < n_test[group_index]


def synthetic_evaluator(reference: SyntheticLRS, *, logistic: bool = False) -> Callable[[torch.Tensor, LocalFit], dict]:
    """Metrics against a :class:`SyntheticLRS` (for ``run_engine(evaluate=...)``): distance, errors, support F1, test MSE/AUC."""

    def evaluate(U: torch.Tensor, fit: LocalFit) -> dict:
        to = dict(device=U.device, dtype=U.dtype)
        theta = user_parameters(U, fit)
        test = reference.test.to(**to)
        metrics = {
            "distance": principal_angle_distance(U, reference.U_star.to(**to)),
            "relative_error": mean_relative_error(theta, reference.theta_star.to(**to)),
            "support_f1": support_f1(fit.b, reference.B_star.to(**to)),
        }
        if logistic:
            metrics["test_auc"] = mean_user_auc(test, theta)
        else:
            metrics["test_mse"] = mean_user_mse(test, theta)
        return metrics

    return evaluate
