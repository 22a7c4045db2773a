"""Non-private baselines of the rating experiments that are not special cases of :func:`fedlrs.recsys.model.fit_recsys`.

- :func:`global_item_model`: today's global model with one-hot item features, one
  ``theta`` for everybody: ``y_ij ~ mu + c_j`` with ridge ``c_j = sum_i (y_ij - mu) / (n_j + lam)``.
- :func:`library_mf`: biased matrix factorization of a kept library, scikit-surprise's
  ``SVD`` (Funk SVD with biases by SGD, ``mu + b_u + b_i + q_i . p_u``).

(Global mean + user + item bias, local only and the DP item-bias model are rank-0 runs
of :func:`fedlrs.recsys.model.fit_recsys`.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedlrs.data.ratings import Ratings


def rmse(prediction: np.ndarray, ratings: Ratings) -> float:
    """``sqrt(mean_l (y_l - p_l)^2)``."""
    return float(np.sqrt(np.mean((np.asarray(prediction) - ratings.ratings) ** 2)))


@dataclass(frozen=True)
class GlobalItemModel:
    """``mu + c_j``: one model for every user (0 numbers stored per user)."""

    mean: float
    item_bias: np.ndarray

    def predict(self, ratings: Ratings) -> np.ndarray:
        return self.mean + self.item_bias[ratings.items]


def global_item_model(train: Ratings, num_items: int, *, ridge: float = 5.0) -> GlobalItemModel:
    """``mu = mean(y)``, ``c_j = sum_{i rated j} (y_ij - mu) / (n_j + ridge)``."""
    if ridge < 0:
        raise ValueError(f"ridge == {ridge}, must be >= 0.")
    mean = float(train.ratings.mean())
    sums = np.bincount(train.items, weights=train.ratings - mean, minlength=num_items)
    counts = np.bincount(train.items, minlength=num_items)
    return GlobalItemModel(mean, sums / np.maximum(counts + ridge, 1e-12))


class LibraryMF:
    """scikit-surprise ``SVD`` fitted on a :class:`Ratings` table; ``predict`` clips to the rating scale as surprise does."""

    def __init__(self, *, n_factors: int, reg_all: float, n_epochs: int, lr_all: float = 0.005, seed: int = 0):
        self.params = dict(n_factors=n_factors, reg_all=reg_all, n_epochs=n_epochs, lr_all=lr_all, random_state=seed)

    def fit(self, train: Ratings, rating_range: tuple[float, float]) -> "LibraryMF":
        import pandas as pd
        from surprise import SVD, Dataset, Reader

        frame = pd.DataFrame({"user": train.users, "item": train.items, "rating": train.ratings})
        self.trainset_ = Dataset.load_from_df(frame, Reader(rating_scale=rating_range)).build_full_trainset()
        self.model_ = SVD(**self.params).fit(self.trainset_)
        return self

    def predict(self, ratings: Ratings) -> np.ndarray:
        return np.array([self.model_.predict(int(u), int(i)).est for u, i in zip(ratings.users, ratings.items)])


def library_mf(train: Ratings, rating_range: tuple[float, float], **params) -> LibraryMF:
    """A fitted :class:`LibraryMF` (``n_factors``, ``reg_all``, ``n_epochs``, ``lr_all``, ``seed``)."""
    return LibraryMF(**params).fit(train, rating_range)
