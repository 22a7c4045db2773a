"""scipy.sparse input of the LRS estimators: indicator rows go to the matrix-completion paths of :mod:`fedlrs.core`.

The choice is made from the data. A CSR (or any scipy.sparse) ``X`` whose stored values are all 1:

- every row has exactly one non-zero: **one-hot** item features, :mod:`fedlrs.core.sparse`
  ("ls": alternating least squares, one (r+1) x (r+1) solve per item);
- rows with one or more non-zeros (e.g. an item's one-hot id and its genre indicators):
  **multi-hot** features, :mod:`fedlrs.core.multihot` ("ls": the majorized per-feature step,
  which never raises the loss; "gd" as for one-hot). A row with no non-zero is refused.

Both fit with :func:`fedlrs.recsys.model.fit_recsys`, per-user work and memory in the user's rows
times their non-zeros, never in d. Then ``y_ij = o + a_i + x_ij . (c + U w_i + b_i)``: an offset, a
user bias, published feature biases ``c`` and factors ``U``, and the user's ``w_i``, sparse ``b_i``.
Any other sparse ``X`` (values other than 1) is made dense and takes the dense path.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedlrs.core.multihot import feature_statistics
from fedlrs.core.sparse import item_statistics
from fedlrs.recsys.model import RecsysConfig, RecsysResult, fit_recsys

_SMALLEST_RIDGE = 1e-6
ONE_HOT, MULTI_HOT = "one-hot", "multi-hot"


def is_sparse(X) -> bool:
    """Whether ``X`` is a scipy.sparse matrix or array."""
    import scipy.sparse

    return scipy.sparse.issparse(X)


@dataclass(frozen=True)
class SparseRows:
    """Indicator rows of a sparse ``X``: ``kind`` (``"one-hot"`` or ``"multi-hot"``) and the canonical CSR (sorted, no duplicates or stored zeros)."""

    kind: str
    csr: object

    @property
    def items(self) -> np.ndarray:
        """The column of each row's single 1 (one-hot rows)."""
        return self.csr.indices.astype(np.int64)

    @property
    def num_features(self) -> int:
        return self.csr.shape[1]

    def __len__(self) -> int:
        return self.csr.shape[0]


def sparse_rows(X, name: str = "X") -> SparseRows | None:
    """The indicator rows of the sparse ``X`` (every stored value 1), one-hot or multi-hot; None for other values (the dense path).

    A multi-hot ``X`` with a row of no non-zero is refused (the row names itself).
    """
    csr = X.tocsr().copy()
    csr.sum_duplicates()
    csr.eliminate_zeros()
    if csr.shape[0] == 0:
        raise ValueError(f"{name} has no rows.")
    if not np.isfinite(csr.data).all():
        raise ValueError(f"{name} has a NaN or infinite value.")
    if not (csr.data == 1).all():
        return None
    width = np.diff(csr.indptr)
    if (width == 1).all():
        return SparseRows(ONE_HOT, csr)
    if (width == 0).any():
        raise ValueError(f"row {int(np.argmax(width == 0))} of {name} has no non-zero entry: sparse 0/1 features need at least one 1 per row "
                         "(one-hot or multi-hot); give the row a feature, drop it, or pass a dense X.")
    return SparseRows(MULTI_HOT, csr)


def densify(X, name: str = "X") -> np.ndarray:
    """A sparse ``X`` that is not 0/1 indicator rows, as a dense float64 array (the dense path)."""
    return np.asarray(X.toarray(), dtype=np.float64)


def fit_sparse(params: dict, rows: SparseRows, y: np.ndarray, group_index: np.ndarray, *, num_users: int) -> RecsysResult:
    """:func:`fit_recsys` on the one-hot or multi-hot rows, the estimator's parameters mapped onto :class:`RecsysConfig`.

    rank, sparsity, rounds, the ridges (``ridge_w`` also for the user bias, ``ridge_u`` also for
    the feature biases; at least 1e-6, a feature nobody has needs a ridge), ``random_state`` as the seed;
    ``mode="auto"`` is "ls". Private sparse fits are refused here: they need a rating cap (use
    :func:`fedlrs.recsys.private.fit_private_lrs` for one-hot items).
    """
    if params["epsilon"] is not None or params["delta"] is not None:
        raise ValueError(f"a private fit of {rows.kind} sparse X is not supported by the estimator: it needs a per-user rating cap; "
                         "use fedlrs.recsys (fit_recsys / fit_private_lrs) or pass a dense X.")
    if params["mode"] not in ("auto", "ls", "gd"):
        raise ValueError(f"mode == {params['mode']!r}, must be 'auto', 'ls' or 'gd'.")
    ridge = {name: max(float(params[name]), _SMALLEST_RIDGE) for name in ("ridge_w", "ridge_b", "ridge_u")}
    config = RecsysConfig(rank=params["rank"], sparsity=params["sparsity"], rounds=params["rounds"], mode="ls" if params["mode"] == "auto" else params["mode"],
                          ridge_w=ridge["ridge_w"], ridge_b=ridge["ridge_b"], ridge_u=ridge["ridge_u"], ridge_user_bias=ridge["ridge_w"],
                          ridge_item_bias=ridge["ridge_u"], gd_learning_rate=params["gd_learning_rate"], sample_rate=params["sample_rate"], seed=params["random_state"])
    if rows.kind == ONE_HOT:
        stats = item_statistics(group_index, rows.items, y, num_users=num_users, num_items=rows.num_features)
    else:
        csr = rows.csr
        stats = feature_statistics(group_index, csr.indptr, csr.indices, csr.data, y, num_users=num_users, num_features=rows.num_features)
    low, high = float(y.min()), float(y.max())
    return fit_recsys(stats, config, rating_range=(low, high if high > low else low + 1.0))


def predict_sparse(result: RecsysResult, rows: SparseRows, positions: np.ndarray) -> np.ndarray:
    """The predicted ratings of ``rows``, row l by the fitted user at ``positions[l]``."""
    if rows.kind == ONE_HOT:
        return result.predict(positions, rows.items).numpy()
    csr = rows.csr
    return result.predict_rows(positions, csr.indptr, csr.indices, csr.data).numpy()


def feature_thetas(result: RecsysResult) -> np.ndarray:
    """``c + U w_i + b_i`` (users, d) per fitted user: with the intercept ``o + a_i``, ``y_hat = o + a_i + x . theta_i``."""
    fit = result.fit
    theta = (fit.w @ result.P[:, :-1].T + result.P[:, -1]).numpy()
    np.add.at(theta, (np.arange(len(theta))[:, None].repeat(fit.b_items.shape[1], 1), fit.b_items.numpy()), fit.b_values.numpy())
    return theta
