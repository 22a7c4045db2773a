"""Checks of what a user hands the estimators: parameters, arrays, user labels.

Every refusal is a :class:`ValueError` whose message names the argument, the value
and the rule (``rank == 2.5, must be an integer >= 1.``), or the row at fault.
NumPy only at import time; pandas is imported where user labels are encoded.
"""

from __future__ import annotations

import numbers

import numpy as np

__all__ = [
    "InvalidParameterError",
    "check_int",
    "check_real",
    "check_choice",
    "as_matrix",
    "as_vector",
    "as_finite_vector",
    "check_magnitude",
    "encode_groups",
    "group_positions",
    "label_repr",
    "require_routed",
]


class InvalidParameterError(ValueError, TypeError):
    """A parameter of the wrong type or out of range (a ``ValueError`` and a ``TypeError``, as scikit-learn's)."""


def check_int(name: str, value, low: int, *, high: int | None = None) -> None:
    """Refuse ``value`` unless it is an integer (not a bool) with ``low <= value (<= high)``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        rule = f"an integer >= {low}" if high is None else f"an integer in [{low}, {high}]"
        raise InvalidParameterError(f"{name} == {value!r}, must be {rule}.")
    if value < low:
        raise InvalidParameterError(f"{name} == {value}, must be >= {low}.")
    if high is not None and value > high:
        raise InvalidParameterError(f"{name} == {value}, must be <= {high}.")


def check_real(name: str, value, low: float | None = None, *, strict: bool = False, high: float | None = None) -> None:
    """Refuse ``value`` unless it is a finite real number (not a bool) with ``low <= value`` (``<`` when strict) and ``value <= high``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise InvalidParameterError(f"{name} == {value!r}, must be a finite number.")
    if low is not None and ((strict and value <= low) or (not strict and value < low)):
        raise InvalidParameterError(f"{name} == {value}, must be {'>' if strict else '>='} {low}.")
    if high is not None and value > high:
        raise InvalidParameterError(f"{name} == {value}, must be <= {high}.")


def check_choice(name: str, value, choices) -> None:
    """Refuse ``value`` unless it is one of ``choices``."""
    if not any(value is c or (isinstance(value, str) and value == c) for c in choices):
        raise InvalidParameterError(f"{name} == {value!r}, must be one of {', '.join(repr(c) for c in choices)}.")


def as_matrix(X, name: str = "X") -> np.ndarray:
    """``X`` as a finite float64 array (rows, features); a DataFrame is read through ``to_numpy``."""
    try:
        array = X.to_numpy(dtype=np.float64) if hasattr(X, "to_numpy") else np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold numbers only (convert or encode its non-numeric columns).") from None
    if array.ndim != 2:
        raise ValueError(f"{name} has {array.ndim} dimensions, must be 2 (rows, features).")
    if array.shape[0] == 0:
        raise ValueError(f"{name} has no rows.")
    if not np.isfinite(array).all():
        row = int(np.argwhere(~np.isfinite(array))[0, 0])
        raise ValueError(f"{name} has a NaN or infinite value (first in row {row}).")
    return array


def as_vector(y, rows: int, name: str) -> np.ndarray:
    """``y`` as a 1-D array of ``rows`` entries, any dtype."""
    array = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
    if array.ndim != 1:
        raise ValueError(f"{name} has {array.ndim} dimensions, must be 1.")
    if array.shape[0] != rows:
        raise ValueError(f"{name} has {array.shape[0]} rows, must match X's {rows} rows.")
    return array


def as_finite_vector(y, rows: int, name: str = "y") -> np.ndarray:
    """``y`` as a finite float64 vector of ``rows`` entries."""
    array = as_vector(y, rows, name)
    try:
        array = array.astype(np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must hold numbers only.") from None
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has a NaN or infinite value (first in row {int(np.argwhere(~np.isfinite(array))[0, 0])}).")
    return array


def magnitude_limit(dtype, rows: int, features: int, degree: int = 4) -> float:
    """``(max(dtype) / (rows * (features + 1)) ** (degree / 2)) ** (1 / degree)``: the largest value whose statistics stay finite.

    A fit forms sums over ``rows`` rows of products of up to ``degree`` values with up
    to ``features + 1`` terms each: degree 4 for ``X^T X`` and its products (the "ls"
    system ``(w w^T) kron (X^T X)``, the curvature bounds of Personalized Regression),
    degree 8 for the squared Frobenius norm of a user's moments ``sum_j y_j^2 x_j x_j^T``,
    which a private fit clips. Values below the limit keep every such sum finite in ``dtype``.
    """
    terms = float(max(rows, 1) * (features + 1))
    return float((float(np.finfo(dtype).max) / terms ** (degree / 2)) ** (1.0 / degree))


def check_magnitude(arrays: dict[str, np.ndarray], *, dtype, rows: int, degree: int = 4, row_owner=None) -> None:
    """Refuse any row of the named arrays with a value above :func:`magnitude_limit`, naming the first such row.

    ``arrays`` maps a name to a (rows, ...) float array; ``rows`` is the largest number
    of rows one sum runs over (a user's rows); ``row_owner(row)`` may add who owns it.
    """
    features = sum(int(np.prod(a.shape[1:], dtype=int)) for a in arrays.values())
    limit = magnitude_limit(dtype, rows, features, degree)
    for name, array in arrays.items():
        size = np.abs(array).reshape(array.shape[0], -1).max(axis=1)
        if (size > limit).any():
            row = int(np.argmax(size > limit))
            owner = f" ({row_owner(row)})" if row_owner is not None else ""
            raise ValueError(
                f"{name} row {row}{owner} has a value of magnitude {size[row]:.3g}: values above {limit:.3g} make the "
                f"fit's statistics overflow {np.dtype(dtype).name}; rescale {' and '.join(arrays)} (e.g. with StandardScaler)."
            )


def label_repr(label) -> str:
    """``repr`` of a user label, with a NumPy scalar shown as the Python value it holds (``3``, not ``np.int64(3)``)."""
    return repr(label.item() if isinstance(label, np.generic) else label)


def require_routed(value, name: str, method: str, what: str):
    """``value``, unless it is None: then a ValueError saying that ``method`` needs ``what`` and how a Pipeline routes it."""
    if value is None:
        raise ValueError(
            f"{name} is None: {method} needs {what} ({name}=...). In a Pipeline, route it with "
            f"sklearn.set_config(enable_metadata_routing=True) and set_{method}_request({name}=True)."
        )
    return value


def _group_values(groups, rows: int, name: str) -> np.ndarray:
    """``groups`` as a 1-D array; a list of mixed labels becomes an object array, never strings."""
    if isinstance(groups, np.ndarray) or hasattr(groups, "to_numpy"):
        values = np.asarray(groups.to_numpy() if hasattr(groups, "to_numpy") else groups)
    else:
        groups = list(groups)
        try:
            values = np.asarray(groups)
        except ValueError:  # ragged: lists or tuples of different lengths among the labels
            values = None
        if values is None or values.ndim != 1 or values.dtype.kind not in "biuf":  # strings, tuples, mixed: keep each as is
            values = np.fromiter(groups, dtype=object, count=len(groups))
    if values.ndim != 1:
        raise ValueError(f"{name} has {values.ndim} dimensions, must be 1 (one user label per row).")
    if values.shape[0] != rows:
        raise ValueError(f"{name} has {values.shape[0]} rows, must match X's {rows} rows.")
    return values


def _first_unhashable(values: np.ndarray) -> int:
    for row, value in enumerate(values):
        try:
            hash(value)
        except TypeError:
            return row
    return -1  # pragma: no cover - only called after pandas found one


def encode_groups(groups, rows: int, name: str = "groups") -> tuple[np.ndarray, np.ndarray]:
    """The distinct user labels (sorted) and each row's position among them.

    Labels may be of any hashable type, mixed (``[1, "a"]``: numbers sort before
    strings; labels that do not compare at all are ordered by type name and repr).
    A missing label (None, NaN, NaT) or an unhashable one is refused with its row.
    """
    import pandas as pd

    values = _group_values(groups, rows, name)
    try:
        try:
            codes, labels = pd.factorize(values, sort=True)
        except TypeError as error:
            if "unhashable" in str(error):
                raise
            codes, labels = pd.factorize(values, sort=False)
            order = sorted(range(len(labels)), key=lambda i: (type(labels[i]).__name__, repr(labels[i])))
            rank = np.empty(len(order), dtype=np.intp)
            rank[order] = np.arange(len(order))
            codes = np.where(codes < 0, codes, rank[np.maximum(codes, 0)])
            labels = np.asarray(labels, dtype=object)[order]
    except TypeError:
        row = _first_unhashable(values)
        raise ValueError(
            f"{name} row {row} holds an unhashable {type(values[row]).__name__}; a user label must be hashable (str, int, tuple, ...)."
        ) from None
    if (codes < 0).any():
        row = int(np.argmax(codes < 0))
        raise ValueError(f"{name} row {row} is missing ({label_repr(values[row])}): every row must name its user.")
    return np.asarray(labels), np.asarray(codes, dtype=np.intp)


def group_positions(labels: np.ndarray, groups, rows: int, name: str = "groups") -> np.ndarray:
    """Each row's position in the fitted ``labels``; a missing or unseen label is refused with its row."""
    import pandas as pd

    values = _group_values(groups, rows, name)
    try:
        positions = pd.Index(labels, tupleize_cols=False).get_indexer(values)
    except TypeError:
        row = _first_unhashable(values)
        raise ValueError(f"{name} row {row} holds an unhashable {type(values[row]).__name__}.") from None
    if (positions < 0).any():
        row = int(np.argmax(positions < 0))
        value = values[row]
        if pd.isna(value) if np.ndim(value) == 0 else False:
            raise ValueError(f"{name} row {row} is missing ({label_repr(value)}): every row must name its user.")
        raise ValueError(
            f"{name} has a user not seen in fit: {label_repr(value)} (row {row}); "
            "call personalize(X_new, y_new) for a new user."
        )
    return positions
