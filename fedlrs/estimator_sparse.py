"""scipy.sparse input of the LRS estimators: one-hot rows go to the matrix-completion path of :mod:`fedlrs.core.sparse`.

The choice is made from the data: a CSR (or any scipy.sparse) ``X`` whose every row has
exactly one non-zero entry, equal to 1, is a one-hot item feature, and the fit runs
:func:`fedlrs.recsys.model.fit_recsys` ("ls": alternating least squares, per-user work and
memory in the user's rows, never in d). Then ``theta_ij = o + a_i + c_j + U_j . w_i + b_ij``,
which is ``x . theta_i`` for one-hot ``x`` (the offset, user and item biases fold into
``theta_i``). Any other sparse ``X`` is made dense and takes the dense path.
"""

from __future__ import annotations

import numpy as np

from fedlrs.core.sparse import item_statistics
from fedlrs.recsys.model import RecsysConfig, RecsysResult, fit_recsys

_SMALLEST_RIDGE = 1e-6


def is_sparse(X) -> bool:
    """Whether ``X`` is a scipy.sparse matrix or array."""
    import scipy.sparse

    return scipy.sparse.issparse(X)


def one_hot_items(X, name: str = "X") -> np.ndarray | None:
    """The column of each row's single 1 when the sparse ``X`` is one-hot (every row one non-zero, equal to 1), else None."""
    csr = X.tocsr()
    csr.sum_duplicates()
    csr.eliminate_zeros()
    if csr.shape[0] == 0:
        raise ValueError(f"{name} has no rows.")
    if not np.isfinite(csr.data).all():
        raise ValueError(f"{name} has a NaN or infinite value.")
    if (np.diff(csr.indptr) == 1).all() and (csr.data == 1).all():
        return csr.indices.astype(np.int64)
    return None


def densify(X, name: str = "X") -> np.ndarray:
    """A sparse ``X`` that is not one-hot, as a dense float64 array (the dense path)."""
    return np.asarray(X.toarray(), dtype=np.float64)


def fit_one_hot(params: dict, items: np.ndarray, y: np.ndarray, group_index: np.ndarray, *, num_users: int, num_items: int) -> RecsysResult:
    """:func:`fit_recsys` on the one-hot rows, the estimator's parameters mapped onto :class:`RecsysConfig`.

    rank, sparsity, rounds, the ridges (``ridge_w`` also for the user bias, ``ridge_u`` also for
    the item bias; at least 1e-6, an item nobody rated needs a ridge), ``random_state`` as the seed.
    Private one-hot fits are refused here: they need a rating cap (use :func:`fedlrs.recsys.private.fit_private_lrs`).
    """
    if params["epsilon"] is not None or params["delta"] is not None:
        raise ValueError("a private fit of one-hot sparse X is not supported by the estimator: it needs a per-user rating cap; "
                         "use fedlrs.recsys (fit_recsys / fit_private_lrs) or pass a dense X.")
    if params["mode"] not in ("auto", "ls", "gd"):
        raise ValueError(f"mode == {params['mode']!r}, must be 'auto', 'ls' or 'gd'.")
    ridge = {name: max(float(params[name]), _SMALLEST_RIDGE) for name in ("ridge_w", "ridge_b", "ridge_u")}
    config = RecsysConfig(rank=params["rank"], sparsity=params["sparsity"], rounds=params["rounds"], mode="ls" if params["mode"] == "auto" else params["mode"],
                          ridge_w=ridge["ridge_w"], ridge_b=ridge["ridge_b"], ridge_u=ridge["ridge_u"], ridge_user_bias=ridge["ridge_w"],
                          ridge_item_bias=ridge["ridge_u"], gd_learning_rate=params["gd_learning_rate"], sample_rate=params["sample_rate"], seed=params["random_state"])
    stats = item_statistics(group_index, items, y, num_users=num_users, num_items=num_items)
    low, high = float(y.min()), float(y.max())
    return fit_recsys(stats, config, rating_range=(low, high if high > low else low + 1.0))
