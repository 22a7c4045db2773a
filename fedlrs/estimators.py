"""scikit-learn style estimators over the engine: ``LRSRegressor`` and ``LRSClassifier``.

Rows of a long table belong to users (``groups``); each user gets
``theta_i = U w_i + b_i`` with ``U`` shared, ``w_i`` in R^rank and ``b_i`` with at
most ``sparsity`` non-zero entries. Predictions: ``x . theta_i`` (regression) or
``sigmoid(x . theta_i)`` (classification).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import NotFittedError
from sklearn.metrics import accuracy_score, r2_score

from fedlrs.core import LocalFit, UserData, solve_local, solve_local_logistic, sufficient_statistics, user_parameters
from fedlrs.core.stats import pad_by_group
from fedlrs.estimator_sparse import ONE_HOT, densify, feature_thetas, fit_sparse, is_sparse, predict_sparse, sparse_rows
from fedlrs.estimator_parameters import ATTRIBUTES_DOC, PARAMETERS_DOC, engine_config, init_with_defaults
from fedlrs.input_validation import (
    as_finite_vector, as_matrix, as_vector, check_magnitude, encode_groups, group_positions, label_repr,
    require_routed,
)
from fedlrs.simulations.engine import DTYPES, EngineConfig, run_engine

__all__ = ["LRSRegressor", "LRSClassifier", "PersonalModel", "NotFittedError"]


@dataclass(frozen=True)
class PersonalModel:
    """A user's own model ``theta = U w + b``, fitted on the device from the published U."""

    w: np.ndarray
    b: np.ndarray
    theta: np.ndarray

    def decision_function(self, X) -> np.ndarray:
        """``x . theta`` per row."""
        return as_matrix(X) @ self.theta

    def predict(self, X) -> np.ndarray:
        """``x . theta`` per row (for a classifier's user, a score; use ``predict_proba`` of the estimator)."""
        return self.decision_function(X)



def _groups_given(groups, method: str):
    return require_routed(groups, "groups", method, "the user of each row")


class _LRSBase(BaseEstimator):
    _loss = "squared"

    def __init__(
        self,
        rank: int = 2,
        sparsity: int = 0,
        rounds: int = 10,
        *,
        mode: str = "auto",
        init: str = "moments",
        sample_rate: float = 1.0,
        ridge_w: float = 1e-6,
        ridge_b: float = 1e-6,
        ridge_u: float = 1e-6,
        gd_learning_rate: float = 1.0,
        random_state: int = 0,
        device: str = "cpu",
        dtype: str = "float64",
        progress: bool = False,
        epsilon: float | None = None,
        delta: float | None = None,
        accountant: str = "rdp",
        clip_g: float = 5.0,
        clip_a: float = 300.0,
        clip_c: float = 50.0,
        clip_moments: float = 100.0,
        clip_quantile: float = 0.5,
        init_noise_multiplier: float = 0.0,
        noise_seed: int = -1,
        ray_workers: int = 0,
    ):
        self.rank = rank
        self.sparsity = sparsity
        self.rounds = rounds
        self.mode = mode
        self.init = init
        self.sample_rate = sample_rate
        self.ridge_w = ridge_w
        self.ridge_b = ridge_b
        self.ridge_u = ridge_u
        self.gd_learning_rate = gd_learning_rate
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.progress = progress
        self.epsilon = epsilon
        self.delta = delta
        self.accountant = accountant
        self.clip_g = clip_g
        self.clip_a = clip_a
        self.clip_c = clip_c
        self.clip_moments = clip_moments
        self.clip_quantile = clip_quantile
        self.init_noise_multiplier = init_noise_multiplier
        self.noise_seed = noise_seed
        self.ray_workers = ray_workers

    def _engine_config(self) -> EngineConfig:
        return engine_config(self.get_params(), loss=self._loss)

    def _fit_target(self, y, rows: int) -> tuple[np.ndarray, dict]:
        """The fit's numeric target and the attributes it fixes (the classifier's ``classes_``)."""
        return as_finite_vector(y, rows), {}

    def _target(self, y, rows: int) -> np.ndarray:
        return as_finite_vector(y, rows)

    def fit(self, X, y=None, groups=None):
        """Learn ``U`` over all users and each user's ``w_i, b_i``.

        With ``epsilon`` and ``delta`` the fit is user-level (epsilon, delta)-DP
        (DESIGN.md section 3): ``ledger_`` holds every release and ``epsilon_`` is
        recomputed from it. ``ray_workers=K`` runs the rounds on K Ray actors (docs/scale.md).

        Parameters
        ----------
        X : array-like of shape (n_rows, n_features), or a federation on disk
            One example per row, of any user; or a :class:`fedlrs.data.ParquetFederation`
            (then ``y`` and ``groups`` are None: the users are streamed each round and
            labelled 0..N-1).
        y : array-like of shape (n_rows,)
            The targets (two classes for the classifier).
        groups : array-like of shape (n_rows,)
            The user of each row: labels of any hashable type (None and NaN are refused).

        Returns
        -------
        self
        """
        config = self._engine_config()
        if hasattr(X, "streamed"):  # a federation on disk (fedlrs.data.ParquetFederation): user i is row i
            if y is not None or groups is not None:
                raise ValueError("X is a federation on disk, which holds y and the users: give y=None and groups=None.")
            config.check_data(X.dim)
            data, labels, features = X, np.arange(X.num_users), X.dim
            target_attributes = {"classes_": np.array([0.0, 1.0])} if self._loss == "logistic" else {}  # the labels on disk are the 0/1 targets
        else:
            if is_sparse(X):
                rows = sparse_rows(X) if self._loss == "squared" else None
                if rows is not None:
                    return self._fit_sparse(rows, y, groups)
                X = densify(X)
            Xa = as_matrix(X)
            ya, target_attributes = self._fit_target(y, Xa.shape[0])
            labels, group_index = encode_groups(_groups_given(groups, "fit"), Xa.shape[0])
            config.check_data(Xa.shape[1])
            check_magnitude({"X": Xa, "y": ya}, dtype=self.dtype, rows=int(np.bincount(group_index).max()), degree=8 if config.private else 4,
                            row_owner=lambda row: f"user {label_repr(labels[group_index[row]])}")
            data = pad_by_group(Xa, ya, group_index, len(labels), dtype=DTYPES[self.dtype], device=self.device)
            features = Xa.shape[1]
        result = self._run(data, config)
        for name, value in target_attributes.items():
            setattr(self, name, value)
        self.U_ = result.U.cpu().numpy()
        self.W_ = result.fit.w.cpu().numpy()
        self.B_ = result.fit.b.cpu().numpy()
        self.groups_ = labels
        self.history_ = result.history
        self.n_features_in_ = features
        self.result_ = result
        self.sparse_features_ = None
        self.ledger_ = result.ledger
        self.epsilon_ = result.epsilon(self.accountant) if result.ledger is not None else None
        return self

    def _fit_sparse(self, rows, y, groups):
        """The one-hot or multi-hot path (:mod:`fedlrs.estimator_sparse`; ``sparse_features_`` says which): ``U_`` (d, r),
        ``W_`` (users, r); ``B_`` is not formed (sparse ``b_i`` in ``result_.fit``)."""
        ya = as_finite_vector(y, len(rows))
        labels, group_index = encode_groups(_groups_given(groups, "fit"), len(rows))
        result = fit_sparse(self.get_params(), rows, ya, group_index, num_users=len(labels))
        self.U_ = result.P[:, :-1].numpy()
        self.W_ = result.fit.w.numpy()
        self.groups_, self.n_features_in_, self.history_ = labels, rows.num_features, result.history
        self.result_, self.sparse_features_, self.ledger_, self.epsilon_ = result, rows.kind, None, None
        return self

    def _run(self, data, config: EngineConfig):
        """The engine in process, or on ``ray_workers`` Ray actors (a local Ray, or the cluster of ``RAY_ADDRESS``)."""
        if not self.ray_workers:
            return run_engine(data, config, progress=self.progress)
        from fedlrs.simulations.ray_engine import RayFederation

        with RayFederation(data, config, workers=self.ray_workers) as shards:
            return run_engine(shards, config, progress=self.progress)

    def write_privacy_report(self, out_dir) -> dict:
        """The privacy report of a private fit: ``privacy_report.json``, ``.md`` and ``epsilon.png`` in ``out_dir``."""
        self._check_fitted()
        return self.result_.write_privacy_report(out_dir)

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "U_")

    def _check_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X, y, groups) first.")

    def _check_features(self, Xa: np.ndarray) -> None:
        if Xa.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {Xa.shape[1]} features, the model was fitted with {self.n_features_in_}.")

    @property
    def thetas_(self) -> np.ndarray:
        """``theta_i = U w_i + b_i`` per fitted user (users, d); one-hot fits: ``o + a_i + c + U w_i + b_i``;
        multi-hot fits: ``c + U w_i + b_i`` (the prediction adds the intercept ``o + a_i``)."""
        self._check_fitted()
        if self.sparse_features_ is not None and self.sparse_features_ != ONE_HOT:
            return feature_thetas(self.result_)
        if self.sparse_features_ == ONE_HOT:
            users = np.repeat(np.arange(len(self.groups_)), self.n_features_in_)
            return self.result_.predict(users, np.tile(np.arange(self.n_features_in_), len(self.groups_))).numpy().reshape(len(self.groups_), -1)
        return self.W_ @ self.U_.T + self.B_

    def decision_function(self, X, groups=None) -> np.ndarray:
        """``x_j . theta_{g_j}`` for every row j, with ``g_j`` its user (in ``groups``); an unknown user is an error."""
        self._check_fitted()
        if self.sparse_features_ is not None:  # fitted on sparse 0/1 rows: predicts sparse 0/1 rows only
            rows = sparse_rows(X) if is_sparse(X) else None
            if rows is None:
                raise ValueError(f"this model was fitted on {self.sparse_features_} sparse X; X must be a scipy.sparse matrix of 0/1 rows too.")
            if X.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {X.shape[1]} features, the model was fitted with {self.n_features_in_}.")
            return predict_sparse(self.result_, rows, group_positions(self.groups_, _groups_given(groups, "predict"), len(rows)))
        if is_sparse(X):
            X = densify(X)
        Xa = as_matrix(X)
        self._check_features(Xa)
        position = group_positions(self.groups_, _groups_given(groups, "predict"), Xa.shape[0])
        return np.einsum("nd,nd->n", Xa, self.thetas_[position])

    def _personal_fit(self, U: torch.Tensor, data: UserData) -> LocalFit:
        stats = sufficient_statistics(data)
        return solve_local(U, stats, sparsity=self.sparsity, ridge_w=self.ridge_w, ridge_b=self.ridge_b)

    def personalize(self, X_new, y_new) -> PersonalModel:
        """Fit a new user's ``w, b`` from the learned ``U`` and its own examples; nothing else changes."""
        self._check_fitted()
        if self.sparse_features_ is not None:
            raise ValueError(f"personalize is not available for a {self.sparse_features_} sparse fit (its users keep biases too); refit with the new user's rows.")
        Xa = as_matrix(X_new, "X_new")
        self._check_features(Xa)
        ya = self._target(y_new, Xa.shape[0])
        check_magnitude({"X_new": Xa, "y_new": ya}, dtype=np.float64, rows=Xa.shape[0])
        t = dict(dtype=torch.float64)
        data = UserData(torch.as_tensor(Xa, **t)[None], torch.as_tensor(ya, **t)[None], torch.ones(1, Xa.shape[0], dtype=torch.bool))
        U = torch.as_tensor(self.U_, **t)
        fit = self._personal_fit(U, data)
        theta = user_parameters(U, fit)[0].numpy()
        return PersonalModel(fit.w[0].numpy(), fit.b[0].numpy(), theta)


class LRSRegressor(RegressorMixin, _LRSBase):
    __doc__ = """Low rank plus sparse personalized linear regression, learned by AMHT-LRS.

    Each user i (a label of ``groups``) gets ``theta_i = U w_i + b_i`` and
    ``y_hat = x . theta_i``; ``groups`` is passed to ``fit``, ``predict`` and ``score``
    (in a Pipeline, routed with ``set_fit_request(groups=True)`` and friends).
""" + PARAMETERS_DOC.format(ridge_w="1e-6", ridge_b="1e-6") + ATTRIBUTES_DOC + """
    Examples
    --------
    >>> from fedlrs import LRSRegressor
    >>> from fedlrs.data.synthetic import make_lrs_data
    >>> import numpy as np
    >>> data = make_lrs_data(users=200, examples=20, dim=10, rank=2, sparsity=1, seed=0)
    >>> X = data.train.X.reshape(-1, 10).numpy(); y = data.train.y.reshape(-1).numpy()
    >>> groups = np.repeat(np.arange(200), 20)
    >>> model = LRSRegressor(rank=2, sparsity=1, rounds=5).fit(X, y, groups)
    >>> model.predict(X[:3], groups[:3]).shape
    (3,)
    """

    def predict(self, X, groups=None) -> np.ndarray:
        """``y_hat_j = x_j . theta_{g_j}``."""
        return self.decision_function(X, groups)

    def score(self, X, y, groups=None, sample_weight=None) -> float:
        """R^2 of ``predict(X, groups)`` against ``y``."""
        return float(r2_score(y, self.predict(X, groups), sample_weight=sample_weight))


class LRSClassifier(ClassifierMixin, _LRSBase):
    __doc__ = """Low rank plus sparse personalized logistic regression: ``P(y = 1 | x) = sigmoid(x . theta_i)``.

    The U update runs in "gd" mode (the exact "ls" update is for the squared loss).
    The parameters are those of :class:`LRSRegressor`, with larger default ridges.
""" + PARAMETERS_DOC.format(ridge_w="1e-2", ridge_b="1e-2") + ATTRIBUTES_DOC + """    classes_ : ndarray of shape (2,)
        The two labels of y; ``classes_[1]`` is the positive class.
    """

    _loss = "logistic"
    __init__ = init_with_defaults(_LRSBase.__init__, ridge_w=1e-2, ridge_b=1e-2)

    def _fit_target(self, y, rows: int) -> tuple[np.ndarray, dict]:
        labels = as_vector(y, rows, "y")
        classes = np.unique(labels)
        if len(classes) != 2:
            raise ValueError(f"y has {len(classes)} distinct labels {list(classes)[:5]}, must have exactly 2.")
        return (labels == classes[1]).astype(np.float64), {"classes_": classes}

    def _target(self, y, rows: int) -> np.ndarray:
        labels = as_vector(y, rows, "y")
        unseen = set(np.unique(labels)) - set(self.classes_)
        if unseen:
            raise ValueError(f"y has labels {sorted(unseen)} not seen in fit; classes are {list(self.classes_)}.")
        return (labels == self.classes_[1]).astype(np.float64)

    def _personal_fit(self, U: torch.Tensor, data: UserData) -> LocalFit:
        return solve_local_logistic(U, data, sparsity=self.sparsity, ridge_w=self.ridge_w, ridge_b=self.ridge_b)

    def predict_proba(self, X, groups=None) -> np.ndarray:
        """``[1 - p, p]`` per row with ``p = sigmoid(x_j . theta_{g_j})``."""
        p = 1 / (1 + np.exp(-self.decision_function(X, groups)))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X, groups=None) -> np.ndarray:
        """The class with the larger probability."""
        scores = self.decision_function(X, groups)
        return self.classes_[(scores > 0).astype(int)]

    def score(self, X, y, groups=None, sample_weight=None) -> float:
        """Accuracy of ``predict(X, groups)`` against ``y``."""
        return float(accuracy_score(y, self.predict(X, groups), sample_weight=sample_weight))
