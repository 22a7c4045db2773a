"""The machinery shared by the Personalized Regression estimators: parameters, fit, prediction (Eq. 7).

The estimators are in :mod:`fedlrs.personalized.estimator`; Algorithm 1 in
:mod:`fedlrs.personalized.optimizer`.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError

from fedlrs.input_validation import as_matrix, check_choice, check_int, check_magnitude, check_real, require_routed

from .metrics import CovariateMetric, as_covariate_array
from .optimizer import fit_factors

__all__ = ["BasePersonalized"]


def _covariates_given(covariates, method: str):
    return require_routed(covariates, "covariates", method, "the side covariates of each row")


class BasePersonalized(BaseEstimator):
    """Shared fitting machinery; subclasses define the loss and the population model."""

    def __init__(
        self,
        *,
        rank: int | None = None,
        gamma: float = 1.0,
        l1_penalty: float = 1e-3,
        nu: float = 0.1,
        learning_rate: float = 0.1,
        decay: float = 0.998,
        min_travel: float = 0.05,
        radius: float | None = None,
        max_neighbors: int = 20,
        n_random_neighbors: int = 0,
        n_neighbors: int | None = None,
        covariate_kinds: Sequence[str | Callable] | None = None,
        population_alpha: float | None = None,
        init_noise: float = 1e-3,
        max_iter: int = 1000,
        tol: float = 1e-6,
        neighbor_update_every: int = 10,
        neighbor_eps: float | None = None,
        n_jobs: int | None = None,
        fit_intercept: bool = True,
        intercept_scaling: float | None = None,
        dtype: str = "float64",
        random_state: int | None = None,
    ):
        self.rank = rank
        self.gamma = gamma
        self.l1_penalty = l1_penalty
        self.nu = nu
        self.learning_rate = learning_rate
        self.decay = decay
        self.min_travel = min_travel
        self.radius = radius
        self.max_neighbors = max_neighbors
        self.n_random_neighbors = n_random_neighbors
        self.n_neighbors = n_neighbors
        self.covariate_kinds = covariate_kinds
        self.population_alpha = population_alpha
        self.init_noise = init_noise
        self.max_iter = max_iter
        self.tol = tol
        self.neighbor_update_every = neighbor_update_every
        self.neighbor_eps = neighbor_eps
        self.n_jobs = n_jobs
        self.fit_intercept = fit_intercept
        self.intercept_scaling = intercept_scaling
        self.dtype = dtype
        self.random_state = random_state

    # ------------------------------------------------------------ hooks
    def _fit_target(self, y, rows: int) -> tuple[np.ndarray, dict]:  # pragma: no cover - abstract
        """The numeric target of the fit and the attributes it fixes (the classifier's ``classes_``)."""
        raise NotImplementedError

    def _population(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:  # pragma: no cover
        raise NotImplementedError

    def _loss_grad(self, eta: np.ndarray, y: np.ndarray) -> np.ndarray:  # pragma: no cover
        """d l / d eta for the linear predictor eta."""
        raise NotImplementedError

    def _loss(self, eta: np.ndarray, y: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    # ------------------------------------------------------------ validation
    def _validate_params(self, n: int, p: int) -> tuple[int, int]:
        """Check every parameter; return the rank q and the number of neighbours k_n in use."""
        columns = p + bool(self.fit_intercept)
        if self.rank is not None:
            check_int("rank", self.rank, 1)
            if self.rank > columns:
                raise ValueError(
                    f"rank == {self.rank}, must be <= {columns} (p == {p} predictors"
                    f"{' + the intercept' if self.fit_intercept else ''})."
                )
        check_real("gamma", self.gamma, 0.0)
        check_real("l1_penalty", self.l1_penalty, 0.0)
        check_real("nu", self.nu, 0.0)
        check_real("learning_rate", self.learning_rate, 0.0, strict=True)
        check_real("decay", self.decay, 0.0, strict=True, high=1.0)
        check_real("min_travel", self.min_travel, 0.0, strict=True)
        if self.radius is not None:
            check_real("radius", self.radius, 0.0, strict=True)
        check_int("max_neighbors", self.max_neighbors, 1)
        check_int("n_random_neighbors", self.n_random_neighbors, 0)
        if self.n_neighbors is not None:
            check_int("n_neighbors", self.n_neighbors, 1)
            if self.n_neighbors > n:
                raise ValueError(f"n_neighbors == {self.n_neighbors}, must be <= n == {n} (the number of training samples).")
        if self.population_alpha is not None:
            check_real("population_alpha", self.population_alpha, 0.0)
        check_real("init_noise", self.init_noise, 0.0, strict=True)
        check_int("max_iter", self.max_iter, 0)
        check_real("tol", self.tol, 0.0)
        check_int("neighbor_update_every", self.neighbor_update_every, 1)
        if self.neighbor_eps is not None:
            check_real("neighbor_eps", self.neighbor_eps, 0.0)
        if self.n_jobs is not None and (isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, numbers.Integral)
                                        or self.n_jobs == 0 or self.n_jobs < -1):
            raise ValueError(f"n_jobs == {self.n_jobs!r}, must be None, -1 or a positive integer.")
        check_choice("fit_intercept", self.fit_intercept, (False, True))
        if self.intercept_scaling is not None:
            check_real("intercept_scaling", self.intercept_scaling, 0.0, strict=True)
        check_choice("dtype", self.dtype, ("float64", "float32"))
        if self.random_state is not None:
            check_int("random_state", self.random_state, 0)
        if n < 2:
            raise ValueError(f"n == {n}, must be >= 2 samples.")
        rank = self.rank if self.rank is not None else min(columns, 10)
        n_neighbors = self.n_neighbors if self.n_neighbors is not None else min(n, max(3, round(math.sqrt(n) / 2)))
        return rank, n_neighbors

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "thetas_")

    def _check_is_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(f"This {type(self).__name__} is not fitted yet; call fit(X, y, covariates) first.")

    # ------------------------------------------------------------ fit
    def fit(self, X, y, covariates=None):
        """Fit one model per training sample (Algorithm 1).

        Parameters
        ----------
        X : array of shape (n, p)
            Predictors.
        y : array of shape (n,)
            Responses (real for the regressor, two classes for the classifier).
        covariates : array-like of shape (n, k)
            Side covariates U, used only through the learned metric rho_phi.

        Returns
        -------
        self
        """
        X = as_matrix(X)
        n, p = X.shape
        t, target_attributes = self._fit_target(y, n)
        U = as_covariate_array(_covariates_given(covariates, "fit"))
        if U.shape[0] != n:
            raise ValueError(f"covariates.shape[0] == {U.shape[0]}, must equal X.shape[0] == {n}.")
        q, n_neighbors = self._validate_params(n, p)
        check_magnitude({"X": X, "y": t}, dtype=self.dtype, rows=n)
        metric = CovariateMetric(self.covariate_kinds).fit(U)
        rng = np.random.default_rng(self.random_state)

        # Population model, then Algorithm 1 from it.
        theta_pop, b_pop = self._population(X, t)
        factors = fit_factors(self, X, t, theta_pop, b_pop, metric, q, rng)
        for name, value in target_attributes.items():
            setattr(self, name, value)
        self.loss_history_ = factors.loss_history
        self.n_iter_ = factors.n_iter
        self.Z_ = factors.Z
        self.Q_ = factors.Q
        self.phi_ = factors.phi
        theta = factors.Z @ factors.Q
        self.thetas_ = theta[:, :p].copy()
        self.intercepts_ = theta[:, p] * factors.intercept_scale if self.fit_intercept else np.zeros(n)
        self.intercept_scale_ = factors.intercept_scale
        self.population_coef_ = theta_pop
        self.population_intercept_ = float(b_pop)
        self.rank_ = q
        self.n_neighbors_ = n_neighbors
        self.n_features_in_ = p
        self.metric_ = metric
        self.covariate_pairs_ = factors.pairs
        return self

    # ------------------------------------------------------------ predict
    def kneighbors(self, covariates) -> np.ndarray:
        """Indices (m x k_n) of the k_n nearest training samples under the learned metric rho_phi."""
        self._check_is_fitted()
        enc = self.metric_.transform(covariates)
        return self.metric_.kneighbors(enc, self.phi_, self.n_neighbors_)

    def predict_params(self, covariates) -> np.ndarray:
        """Personalized parameters for new samples, Eq. (7): ``theta = 1/k_n sum_{j in kNN_phi(U)} theta^(j)``.

        Returns an array (m x p); the personalized intercepts are in :meth:`predict_intercepts`.
        """
        idx = self.kneighbors(covariates)
        return self.thetas_[idx].mean(axis=1)

    def predict_intercepts(self, covariates) -> np.ndarray:
        """Personalized intercepts for new samples, averaged like :meth:`predict_params`."""
        idx = self.kneighbors(covariates)
        return self.intercepts_[idx].mean(axis=1)

    def _decision(self, X, covariates) -> np.ndarray:
        self._check_is_fitted()
        X = as_matrix(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X.shape[1] == {X.shape[1]}, must be {self.n_features_in_} as in fit.")
        U = as_covariate_array(_covariates_given(covariates, "predict"))
        if U.shape[0] != X.shape[0]:
            raise ValueError(f"covariates.shape[0] == {U.shape[0]}, must equal X.shape[0] == {X.shape[0]}.")
        idx = self.kneighbors(U)
        theta = self.thetas_[idx].mean(axis=1)
        b = self.intercepts_[idx].mean(axis=1)
        return np.einsum("ij,ij->i", X, theta) + b
