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

from fedlrs.core import LocalFit, UserData, solve_local, solve_local_logistic, sufficient_statistics, user_parameters
from fedlrs.core.stats import pad_by_group
from fedlrs.simulations.engine import DTYPES, EngineConfig, run_engine


class NotFittedError(RuntimeError):
    """``predict`` or ``personalize`` called before ``fit``."""


def _as_matrix(X, name: str = "X") -> np.ndarray:
    array = np.asarray(X, dtype=np.float64) if not hasattr(X, "to_numpy") else X.to_numpy(dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} has {array.ndim} dimensions, must be 2 (rows, features).")
    if array.shape[0] == 0:
        raise ValueError(f"{name} has no rows.")
    if not np.isfinite(array).all():
        row = int(np.argwhere(~np.isfinite(array))[0, 0])
        raise ValueError(f"{name} has a NaN or infinite value (first in row {row}).")
    return array


def _as_vector(y, rows: int, name: str) -> np.ndarray:
    array = np.asarray(y.to_numpy() if hasattr(y, "to_numpy") else y)
    if array.ndim != 1:
        raise ValueError(f"{name} has {array.ndim} dimensions, must be 1.")
    if array.shape[0] != rows:
        raise ValueError(f"{name} has {array.shape[0]} rows, must match X's {rows} rows.")
    return array


def _as_target(y, rows: int) -> np.ndarray:
    array = _as_vector(y, rows, "y").astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"y has a NaN or infinite value (first in row {int(np.argwhere(~np.isfinite(array))[0, 0])}).")
    return array


@dataclass(frozen=True)
class PersonalModel:
    """A user's own model ``theta = U w + b``, fitted on the device from the published U."""

    w: np.ndarray
    b: np.ndarray
    theta: np.ndarray

    def decision_function(self, X) -> np.ndarray:
        """``x . theta`` per row."""
        return _as_matrix(X) @ self.theta

    def predict(self, X) -> np.ndarray:
        """``x . theta`` per row (for a classifier's user, a score; use ``predict_proba`` of the estimator)."""
        return self.decision_function(X)


class _LRSBase:
    _loss = "squared"

    def __init__(
        self,
        rank: int = 2,
        sparsity: int = 0,
        rounds: int = 10,
        *,
        mode: str | None = None,
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
        clip_moments: float = 1000.0,
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
        self.init_noise_multiplier = init_noise_multiplier
        self.noise_seed = noise_seed
        self.ray_workers = ray_workers

    def _engine_config(self) -> EngineConfig:
        private = self.epsilon is not None or self.delta is not None
        if private and (self.epsilon is None or self.delta is None):
            raise ValueError(f"epsilon == {self.epsilon} and delta == {self.delta}: give both for a private fit, or neither.")
        privacy = {}
        if private:
            privacy = dict(
                private=True, target_epsilon=self.epsilon, delta=self.delta, accountant=self.accountant, clip_g=self.clip_g, clip_a=self.clip_a,
                clip_c=self.clip_c, clip_moments=self.clip_moments, init_noise_multiplier=self.init_noise_multiplier, noise_seed=self.noise_seed,
            )
        return EngineConfig(
            **privacy,
            rank=self.rank,
            sparsity=self.sparsity,
            rounds=self.rounds,
            mode=self.mode or ("gd" if private or self._loss == "logistic" else "ls"),
            loss=self._loss,
            init=self.init,
            sample_rate=self.sample_rate,
            ridge_w=self.ridge_w,
            ridge_b=self.ridge_b,
            ridge_u=self.ridge_u,
            gd_learning_rate=self.gd_learning_rate,
            seed=self.random_state,
            device=self.device,
            dtype=self.dtype,
        )

    def _prepare_target(self, y, rows: int) -> np.ndarray:
        return _as_target(y, rows)

    def fit(self, X, y=None, groups=None):
        """Learn ``U`` over all users and each user's ``w_i, b_i``; returns ``self``.

        ``X`` may also be a federation on disk (:class:`fedlrs.data.ParquetFederation`, with
        ``y`` and ``groups`` None; the users are streamed each round and labelled 0..N-1).
        ``ray_workers=K`` runs the rounds on K Ray actors (docs/scale.md).

        Sets ``U_`` (d, r), ``W_`` (users, r), ``B_`` (users, d), ``groups_`` (the user labels,
        row i of ``W_``/``B_`` belongs to ``groups_[i]``), ``history_`` and ``n_features_in_``.
        With ``epsilon`` and ``delta`` the fit is user-level (epsilon, delta)-DP (DESIGN.md
        section 3): ``ledger_`` holds every release and ``epsilon_`` is recomputed from it.
        """
        config = self._engine_config()
        if hasattr(X, "streamed"):  # a federation on disk (fedlrs.data.ParquetFederation): user i is row i
            if y is not None or groups is not None:
                raise ValueError("X is a federation on disk, which holds y and the users: give y=None and groups=None.")
            data, labels, features = X, np.arange(X.num_users), X.dim
            if self._loss == "logistic":
                self.classes_ = np.array([0.0, 1.0])  # the labels on disk are the 0/1 targets
        else:
            if y is None or groups is None:
                raise ValueError("y and groups are None: give both with a table X (None only with a federation on disk).")
            Xa = _as_matrix(X)
            ya = self._prepare_target(y, Xa.shape[0])
            ga = _as_vector(groups, Xa.shape[0], "groups")
            config.check_data(Xa.shape[1])
            labels, group_index = np.unique(ga, return_inverse=True)
            data = pad_by_group(Xa, ya, group_index, len(labels), dtype=DTYPES[self.dtype], device=self.device)
            features = Xa.shape[1]
        result = self._run(data, config)
        self.U_ = result.U.cpu().numpy()
        self.W_ = result.fit.w.cpu().numpy()
        self.B_ = result.fit.b.cpu().numpy()
        self.groups_ = labels
        self.history_ = result.history
        self.n_features_in_ = features
        self.result_ = result
        self.ledger_ = result.ledger
        self.epsilon_ = result.epsilon(self.accountant) if result.ledger is not None else None
        return self

    def _run(self, data, config: EngineConfig):
        """The engine in process, or on ``ray_workers`` Ray actors (a local Ray, or the cluster of ``RAY_ADDRESS``)."""
        if self.ray_workers < 0:
            raise ValueError(f"ray_workers == {self.ray_workers}, must be >= 0 (0: in process).")
        if not self.ray_workers:
            return run_engine(data, config, progress=self.progress)
        from fedlrs.simulations.ray_engine import RayFederation

        with RayFederation(data, config, workers=self.ray_workers) as shards:
            return run_engine(shards, config, progress=self.progress)

    def write_privacy_report(self, out_dir) -> dict:
        """The privacy report of a private fit: ``privacy_report.json``, ``.md`` and ``epsilon.png`` in ``out_dir``."""
        self._check_fitted()
        return self.result_.write_privacy_report(out_dir)

    def _check_fitted(self) -> None:
        if not hasattr(self, "U_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X, y, groups) first.")

    def _check_features(self, Xa: np.ndarray) -> None:
        if Xa.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {Xa.shape[1]} features, the model was fitted with {self.n_features_in_}.")

    @property
    def thetas_(self) -> np.ndarray:
        """``theta_i = U w_i + b_i`` per fitted user (users, d)."""
        self._check_fitted()
        return self.W_ @ self.U_.T + self.B_

    def decision_function(self, X, groups) -> np.ndarray:
        """``x_j . theta_{g_j}`` for every row j, with ``g_j`` its user; an unknown user is an error."""
        self._check_fitted()
        Xa = _as_matrix(X)
        self._check_features(Xa)
        ga = _as_vector(groups, Xa.shape[0], "groups")
        position = np.searchsorted(self.groups_, ga)
        position = np.clip(position, 0, len(self.groups_) - 1)
        unknown = self.groups_[position] != ga
        if unknown.any():
            raise ValueError(
                f"groups has a user not seen in fit: {ga[unknown][0].item()!r} (row {int(np.argmax(unknown))}); "
                "call personalize(X_new, y_new) for a new user."
            )
        return np.einsum("nd,nd->n", Xa, self.thetas_[position])

    def _personal_fit(self, U: torch.Tensor, data: UserData) -> LocalFit:
        stats = sufficient_statistics(data)
        return solve_local(U, stats, sparsity=self.sparsity, ridge_w=self.ridge_w, ridge_b=self.ridge_b)

    def personalize(self, X_new, y_new) -> PersonalModel:
        """Fit a new user's ``w, b`` from the learned ``U`` and its own examples; nothing else changes."""
        self._check_fitted()
        Xa = _as_matrix(X_new, "X_new")
        self._check_features(Xa)
        ya = self._prepare_target(y_new, Xa.shape[0])
        t = dict(dtype=torch.float64)
        data = UserData(torch.as_tensor(Xa, **t)[None], torch.as_tensor(ya, **t)[None], torch.ones(1, Xa.shape[0], dtype=torch.bool))
        U = torch.as_tensor(self.U_, **t)
        fit = self._personal_fit(U, data)
        theta = user_parameters(U, fit)[0].numpy()
        return PersonalModel(fit.w[0].numpy(), fit.b[0].numpy(), theta)


class LRSRegressor(_LRSBase):
    """Low rank plus sparse personalized linear regression, learned by AMHT-LRS.

    Examples
    --------
    >>> from fedlrs import LRSRegressor
    >>> from fedlrs.simulations.synthetic import make_lrs_data
    >>> import numpy as np
    >>> data = make_lrs_data(users=200, examples=20, dim=10, rank=2, sparsity=1, seed=0)
    >>> X = data.train.X.reshape(-1, 10).numpy(); y = data.train.y.reshape(-1).numpy()
    >>> groups = np.repeat(np.arange(200), 20)
    >>> model = LRSRegressor(rank=2, sparsity=1, rounds=5).fit(X, y, groups)
    >>> model.predict(X[:3], groups[:3]).shape
    (3,)
    """

    def predict(self, X, groups) -> np.ndarray:
        """``y_hat_j = x_j . theta_{g_j}``."""
        return self.decision_function(X, groups)


class LRSClassifier(_LRSBase):
    """Low rank plus sparse personalized logistic regression: ``P(y = 1 | x) = sigmoid(x . theta_i)``.

    The U update runs in "gd" mode (the exact "ls" update is for the squared loss).
    """

    _loss = "logistic"

    def __init__(self, rank: int = 2, sparsity: int = 0, rounds: int = 10, *, mode: str = "gd", ridge_w: float = 1e-2, ridge_b: float = 1e-2, **kwargs):
        super().__init__(rank, sparsity, rounds, mode=mode, ridge_w=ridge_w, ridge_b=ridge_b, **kwargs)

    def _prepare_target(self, y, rows: int) -> np.ndarray:
        labels = _as_vector(y, rows, "y")
        classes = np.unique(labels)
        if hasattr(self, "classes_") and not set(classes) <= set(self.classes_):
            raise ValueError(f"y has labels {sorted(set(classes) - set(self.classes_))} not seen in fit; classes are {list(self.classes_)}.")
        if not hasattr(self, "classes_"):
            if len(classes) != 2:
                raise ValueError(f"y has {len(classes)} distinct labels {list(classes)[:5]}, must have exactly 2.")
            self.classes_ = classes
        return (labels == self.classes_[1]).astype(np.float64)

    def fit(self, X, y=None, groups=None):
        if hasattr(self, "classes_"):
            del self.classes_
        return super().fit(X, y, groups)

    def _personal_fit(self, U: torch.Tensor, data: UserData) -> LocalFit:
        return solve_local_logistic(U, data, sparsity=self.sparsity, ridge_w=self.ridge_w, ridge_b=self.ridge_b)

    def predict_proba(self, X, groups) -> np.ndarray:
        """``[1 - p, p]`` per row with ``p = sigmoid(x_j . theta_{g_j})``."""
        p = 1 / (1 + np.exp(-self.decision_function(X, groups)))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X, groups) -> np.ndarray:
        """The class with the larger probability."""
        return self.classes_[(self.decision_function(X, groups) > 0).astype(int)]
