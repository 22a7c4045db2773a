"""Per-covariate base metrics and the learned covariate distance of Personalized Regression.

Lengerich, Aragam & Xing (NeurIPS 2019), Eq. (3): the distance between the
side covariates of two samples is a non-negative weighted sum of per-covariate
base metrics,

    rho_phi(u, v) = sum_l phi_l d_l(u_l, v_l),    phi_l >= 0.

Built-in base metrics:

* ``"numeric"``: ``d_l(a, b) = |a - b|``;
* ``"categorical"``: the discrete metric ``d_l(a, b) = 1{a != b}``;
* a callable ``d(a, b) -> array``: elementwise and vectorised (it receives two
  NumPy arrays that broadcast against each other and returns the distances).

The built-in metrics are computed once, by encoding every covariate into
columns whose L1 distance *is* the base metric: a numeric covariate is one
column holding its value, a categorical covariate is its one-hot code times
1/2 (two different one-hot codes are at L1 distance 2) plus one column for
categories unseen in training.  Scaling the columns of covariate ``l`` by
``phi_l`` then turns ``rho_phi`` into a plain L1 (Minkowski p=1) distance, so a
KD-tree answers nearest-neighbour queries under the learned metric without any
n x n matrix.  A callable metric cannot be encoded; queries that involve one
fall back to a brute-force search in chunks of rows (memory ``chunk x n``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["CovariateMetric", "BUILTIN_KINDS"]

BUILTIN_KINDS = ("numeric", "categorical")

MetricFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _is_missing(values: np.ndarray) -> np.ndarray:
    """Elementwise ``True`` for NaN or ``None`` entries of any dtype."""
    if values.dtype.kind in "fc":
        return np.isnan(values)
    if values.dtype.kind == "O":
        out = np.zeros(values.shape, dtype=bool)
        for idx, v in enumerate(values):
            out[idx] = v is None or (isinstance(v, float) and np.isnan(v))
        return out
    return np.zeros(values.shape, dtype=bool)


def as_covariate_array(covariates, *, name: str = "covariates") -> np.ndarray:
    """Return ``covariates`` as a 2-D array (object dtype if any column is not numeric)."""
    try:
        arr = np.asarray(covariates, dtype=float)
    except (TypeError, ValueError):
        arr = np.asarray(covariates, dtype=object)
    if arr.ndim == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ValueError(f"{name}.ndim == {arr.ndim}, must be 1 or 2 (samples x covariates).")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name}.shape == {arr.shape}, must have at least one row and one column.")
    return arr


@dataclass
class CovariateMetric:
    """Fitted encoder of the side covariates ``U`` into base-metric coordinates.

    Parameters
    ----------
    kinds : sequence of {"numeric", "categorical"} or callables, or None
        One entry per covariate; ``None`` means every covariate is numeric.

    Examples
    --------
    >>> import numpy as np
    >>> m = CovariateMetric(["numeric", "categorical"]).fit(
    ...     np.array([[0.0, "a"], [1.0, "b"]], dtype=object))
    >>> m.base_distances(m.transform(np.array([[0.5, "a"]], dtype=object)),
    ...                  m.train_, np.array([0]), np.array([1])).tolist()
    [[0.5, 1.0]]
    """

    kinds: Sequence[str | MetricFn] | None = None

    # ------------------------------------------------------------------ fit
    def fit(self, U) -> "CovariateMetric":
        """Validate ``U`` (n x k), learn the categories and encode the training covariates."""
        U = as_covariate_array(U)
        k = U.shape[1]
        kinds = ["numeric"] * k if self.kinds is None else list(self.kinds)
        if len(kinds) != k:
            raise ValueError(
                f"len(covariate_kinds) == {len(kinds)}, must equal the number of covariates ({k})."
            )
        for l, kind in enumerate(kinds):
            if callable(kind):
                continue
            if kind not in BUILTIN_KINDS:
                raise ValueError(
                    f"covariate_kinds[{l}] == {kind!r}, must be 'numeric', 'categorical' "
                    "or a callable d(a, b) -> array."
                )
        self.kinds_ = tuple(kinds)
        self.n_covariates_ = k
        self.categories_: dict[int, np.ndarray] = {}
        for l, kind in enumerate(self.kinds_):
            col = U[:, l]
            self._check_missing(col, l)
            if kind == "categorical":
                self.categories_[l] = np.unique(col.astype(str))
        self.has_callable_ = any(callable(kind) for kind in self.kinds_)
        self.train_ = self.transform(U)
        return self

    def _check_missing(self, col: np.ndarray, l: int) -> None:
        missing = _is_missing(col)
        if missing.any():
            row = int(np.flatnonzero(missing)[0])
            raise ValueError(
                f"covariates[{row}, {l}] is NaN/None, covariates must not contain missing values "
                "(impute or drop those samples first)."
            )

    # ------------------------------------------------------------ transform
    def transform(self, U) -> "EncodedCovariates":
        """Encode covariates (m x k) into the coordinates used by the distances."""
        U = as_covariate_array(U)
        if U.shape[1] != self.n_covariates_:
            raise ValueError(
                f"covariates.shape[1] == {U.shape[1]}, must be {self.n_covariates_} "
                "(the number of covariates seen in fit)."
            )
        blocks, groups, raw = [], [], {}
        start = 0
        for l, kind in enumerate(self.kinds_):
            col = U[:, l]
            self._check_missing(col, l)
            if kind == "numeric":
                try:
                    block = col.astype(float).reshape(-1, 1)
                except (TypeError, ValueError):
                    bad = next(v for v in col if not _is_float(v))
                    raise ValueError(
                        f"covariates column {l} holds the non-numeric value {bad!r}, a 'numeric' "
                        "covariate must be numbers; declare it 'categorical' in covariate_kinds."
                    ) from None
                if not np.all(np.isfinite(block)):
                    raise ValueError(f"covariates column {l} has inf values, must be finite.")
            elif kind == "categorical":
                cats = self.categories_[l]
                codes = np.searchsorted(cats, col.astype(str))
                codes = np.minimum(codes, len(cats) - 1)
                seen = cats[codes] == col.astype(str)
                block = np.zeros((len(col), len(cats) + 1))
                block[np.flatnonzero(seen), codes[seen]] = 0.5
                block[np.flatnonzero(~seen), len(cats)] = 0.5
            else:
                raw[l] = col
                groups.append(None)
                continue
            blocks.append(block)
            groups.append(slice(start, start + block.shape[1]))
            start += block.shape[1]
        enc = np.hstack(blocks) if blocks else np.zeros((U.shape[0], 0))
        return EncodedCovariates(enc, tuple(groups), raw)

    # ------------------------------------------------------------ distances
    def base_distances(
        self, A: "EncodedCovariates", B: "EncodedCovariates", ia: np.ndarray, ib: np.ndarray
    ) -> np.ndarray:
        """Per-covariate base distances ``d_l(A[ia[m]], B[ib[m]])`` for pairs, shape (m, k)."""
        out = np.empty((len(ia), self.n_covariates_))
        for l, grp in enumerate(A.groups):
            if grp is None:
                fn = self.kinds_[l]
                out[:, l] = np.asarray(fn(A.raw[l][ia], B.raw[l][ib]), dtype=float)
            else:
                out[:, l] = np.abs(A.encoded[ia, grp] - B.encoded[ib, grp]).sum(axis=1)
        return out

    def _column_weights(self, A: "EncodedCovariates", phi: np.ndarray) -> np.ndarray:
        w = np.zeros(A.encoded.shape[1])
        for l, grp in enumerate(A.groups):
            if grp is not None:
                w[grp] = phi[l]
        return w

    def kneighbors(
        self, query: "EncodedCovariates", phi: np.ndarray, k: int, *, chunk: int = 1024
    ) -> np.ndarray:
        """Indices (m x k) of the ``k`` training samples nearest to each query under ``rho_phi``.

        Built-in metrics only: a KD-tree over the phi-scaled encoding with the
        Minkowski p=1 metric.  With a callable metric: brute force over the
        training set, ``chunk`` query rows at a time (never an m x n matrix).
        """
        train = self.train_
        if not self.has_callable_:
            w = self._column_weights(train, phi)
            tree = cKDTree(train.encoded * w)
            _, idx = tree.query(query.encoded * w, k=k, p=1)
            return np.asarray(idx).reshape(len(query), k)
        n = len(train)
        out = np.empty((len(query), k), dtype=np.intp)
        for s in range(0, len(query), chunk):
            rows = np.arange(s, min(s + chunk, len(query)))
            dist = np.zeros((len(rows), n))
            for l, grp in enumerate(train.groups):
                if phi[l] == 0:
                    continue
                if grp is None:
                    fn = self.kinds_[l]
                    d = fn(query.raw[l][rows][:, None], train.raw[l][None, :])
                    dist += phi[l] * np.asarray(d, dtype=float)
                else:
                    for c in range(grp.start, grp.stop):
                        dist += phi[l] * np.abs(query.encoded[rows, c][:, None] - train.encoded[None, :, c])
            part = np.argpartition(dist, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(rows), 1))
            order = np.take_along_axis(dist, part, axis=1).argsort(axis=1)
            out[rows] = np.take_along_axis(part, order, axis=1)
        return out


def _is_float(v) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class EncodedCovariates:
    """Covariates in base-metric coordinates: L1-encoded columns plus raw callable columns."""

    encoded: np.ndarray
    groups: tuple
    raw: dict

    def __len__(self) -> int:
        return self.encoded.shape[0]
