"""Per-user data in batched form: padded examples and sufficient statistics.

Every function here works on a leading user dimension ``n``. Users with
different numbers of examples are stored padded to ``m_max`` with a boolean
``mask`` (``True`` for a real example); padded rows never enter a statistic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class PaddedUsers:
    """Examples of ``n`` users, padded to a common length ``m_max``.

    Attributes
    ----------
    X : Tensor (n, m_max, *input_shape)
    y : Tensor (n, m_max)
    mask : Tensor (n, m_max), bool; ``mask[i, j]`` is True when example j of user i is real.

    Subclasses fix the input shape (:class:`UserData`: ``(d,)`` features of a linear model).
    """

    X: Tensor
    y: Tensor
    mask: Tensor

    #: what ``X.shape`` must be, for the error message; ``_check_X`` enforces it
    X_SHAPE = "(users, examples, *input_shape)"

    def _check_X(self) -> bool:
        return self.X.ndim >= 3

    def __post_init__(self) -> None:
        if not self._check_X():
            raise ValueError(f"X has shape {tuple(self.X.shape)}, must be {self.X_SHAPE}.")
        if self.y.shape != self.X.shape[:2]:
            raise ValueError(f"y has shape {tuple(self.y.shape)}, must be {tuple(self.X.shape[:2])} to match X.")
        if self.mask.shape != self.X.shape[:2] or self.mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape {tuple(self.X.shape[:2])}.")

    @property
    def num_users(self) -> int:
        return self.X.shape[0]

    @property
    def counts(self) -> Tensor:
        """Number of real examples per user, ``m_i = sum_j mask_ij``."""
        return self.mask.sum(dim=1)

    def select(self, index: Tensor):
        """The users at ``index`` (an index or bool tensor over users), as the same class."""
        return type(self)(self.X[index], self.y[index], self.mask[index])


@dataclass(frozen=True)
class UserData(PaddedUsers):
    """Examples of ``n`` users of a linear model: ``X (n, m_max, d)``, ``y (n, m_max)``, ``mask (n, m_max)``."""

    X_SHAPE = "(users, examples, dim)"

    def _check_X(self) -> bool:
        return self.X.ndim == 3

    @property
    def dim(self) -> int:
        return self.X.shape[2]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "UserData":
        return UserData(self.X.to(device=device, dtype=dtype), self.y.to(device=device, dtype=dtype), self.mask.to(device))


@dataclass(frozen=True)
class UserStats:
    """Sufficient statistics of the squared loss, per user.

    ``xtx = X_i^T X_i`` (n, d, d), ``xty = X_i^T y_i`` (n, d), ``yty = y_i^T y_i`` (n,),
    ``count = m_i`` (n,). The squared loss of any ``theta`` is
    ``||y_i - X_i theta||^2 = yty - 2 theta^T xty + theta^T xtx theta``.
    """

    xtx: Tensor
    xty: Tensor
    yty: Tensor
    count: Tensor

    def __post_init__(self) -> None:
        n, d = self.xty.shape
        if self.xtx.shape != (n, d, d):
            raise ValueError(f"xtx has shape {tuple(self.xtx.shape)}, must be {(n, d, d)} to match xty {(n, d)}.")
        if self.yty.shape != (n,) or self.count.shape != (n,):
            raise ValueError(f"yty and count must have shape {(n,)}.")

    @property
    def num_users(self) -> int:
        return self.xty.shape[0]

    @property
    def dim(self) -> int:
        return self.xty.shape[1]

    def select(self, index: Tensor) -> "UserStats":
        """The users at ``index`` (an index or bool tensor over users)."""
        return UserStats(self.xtx[index], self.xty[index], self.yty[index], self.count[index])


def sufficient_statistics(data: UserData, weights: Tensor | None = None) -> UserStats:
    """Batched ``X_i^T D_i X_i``, ``X_i^T D_i y_i``, ``y_i^T D_i y_i`` and ``m_i``.

    ``D_i = diag(mask_i * weights_i)``; with ``weights=None`` it is the mask, so
    padded rows contribute nothing. Weighted statistics serve IRLS (logistic loss).
    """
    row_weight = data.mask.to(data.X.dtype)
    if weights is not None:
        row_weight = row_weight * weights
    # every row real and unweighted: D_i = I, no weighted copy of X (x * 1.0 is exact, same result)
    Xw = data.X if weights is None and bool(data.mask.all()) else data.X * row_weight.unsqueeze(-1)
    xtx = Xw.transpose(1, 2) @ data.X
    xty = (Xw.transpose(1, 2) @ data.y.unsqueeze(-1)).squeeze(-1)
    yty = (row_weight * data.y * data.y).sum(dim=1)
    return UserStats(xtx, xty, yty, data.counts.to(data.X.dtype))


@dataclass(frozen=True)
class LeanUsers:
    """Users of the squared loss kept as the smaller of their examples or their statistics.

    A user with ``m_i`` examples in dimension ``d`` needs ``X_i`` (m x d) or ``X_i^T X_i``
    (d x d) for every step of the maths; the batch keeps the examples when ``m_max < d``
    (``stats`` None: the statistics are formed when a step needs them, a chunk of users at a
    time) and the statistics otherwise (``data`` None). A batch built with ``keep_examples``
    keeps the examples whatever their size (the logistic loss needs them).
    """

    data: UserData | None
    stats: UserStats | None

    def __post_init__(self) -> None:
        if (self.data is None) == (self.stats is None):
            raise ValueError("LeanUsers holds exactly one of data or stats.")

    @classmethod
    def from_data(cls, data: UserData, *, keep_examples: bool = False) -> "LeanUsers":
        """``data`` itself when ``m_max < d`` or ``keep_examples``, else its :func:`sufficient_statistics`."""
        if keep_examples or data.X.shape[1] < data.dim:
            return cls(data, None)
        return cls(None, sufficient_statistics(data))

    @property
    def num_users(self) -> int:
        return self.data.num_users if self.data is not None else self.stats.num_users

    @property
    def dim(self) -> int:
        return self.data.dim if self.data is not None else self.stats.dim

    def statistics(self) -> UserStats:
        """``X_i^T X_i``, ``X_i^T y_i``, ``y_i^T y_i``, ``m_i``: the kept ones, or formed from the examples."""
        return self.stats if self.stats is not None else sufficient_statistics(self.data)

    def select(self, index) -> "LeanUsers":
        """The users at ``index`` (an index tensor, bool tensor or slice over users)."""
        if self.data is not None:
            return LeanUsers(self.data.select(index), None)
        return LeanUsers(None, self.stats.select(index))


def pad_by_group(
    X: np.ndarray, y: np.ndarray, group_index: np.ndarray, num_groups: int, *, dtype=torch.float64, device="cpu"
) -> UserData:
    """Rows of a long table to padded per-user tensors, without a Python loop over users.

    ``group_index[j]`` in ``[0, num_groups)`` names the user of row j. Rows keep
    their order within a user. Returns ``UserData`` with ``m_max = max_i m_i``.
    """
    group_index = np.asarray(group_index, dtype=np.int64)
    order = np.argsort(group_index, kind="stable")
    sorted_groups = group_index[order]
    counts = np.bincount(sorted_groups, minlength=num_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(len(order)) - starts[sorted_groups]
    m_max = int(counts.max()) if len(counts) else 0
    d = X.shape[1]
    Xp = np.zeros((num_groups, m_max, d))
    yp = np.zeros((num_groups, m_max))
    mask = np.zeros((num_groups, m_max), dtype=bool)
    Xp[sorted_groups, position] = X[order]
    yp[sorted_groups, position] = y[order]
    mask[sorted_groups, position] = True
    return UserData(
        torch.as_tensor(Xp, dtype=dtype, device=device),
        torch.as_tensor(yp, dtype=dtype, device=device),
        torch.as_tensor(mask, device=device),
    )
