"""The baselines of Lengerich, Aragam & Xing (NeurIPS 2019), section 3, for linear responses.

Every baseline exposes the interface of :class:`~fedlrs.personalized.PersonalizedRegressor`:
``fit(X, y, covariates)``, ``predict(X, covariates)``, ``predict_params(covariates)`` and
``thetas_`` (one parameter vector per training sample), so that the recovery error
``||Omega_hat - Omega||`` is computed the same way for all methods.

* :class:`PopulationRegressor`: one Lasso model for everybody, ``theta^(i) = theta_pop``.
* :class:`MixtureRegressor`: a mixture of K linear regressions fitted by EM,
  ``y | x ~ sum_k pi_k N(<x, theta_k> + b_k, sigma_k^2)``; a training sample's model is its
  posterior mean ``sum_k r_ik theta_k``.  A new sample has no response to compute a
  posterior from, so its component weights come from a multinomial logistic regression of
  the training responsibilities on the covariates (a gate, as in a mixture of experts).
* :class:`VaryingCoefficientRegressor`: ``theta(U) = A [u; 1]``, linear in the
  (one-hot encoded) covariates, fitted by ridge regression on the interactions ``x (x) [u; 1]``.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LassoCV, LogisticRegression, Ridge

from .metrics import CovariateMetric, as_covariate_array

__all__ = ["PopulationRegressor", "MixtureRegressor", "VaryingCoefficientRegressor"]


def _check_xy(X, y, covariates):
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float).reshape(-1)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X.shape == {X.shape} and len(y) == {y.shape[0]}, must be (n, p) and n.")
    U = as_covariate_array(covariates)
    if U.shape[0] != X.shape[0]:
        raise ValueError(f"covariates.shape[0] == {U.shape[0]}, must equal X.shape[0] == {X.shape[0]}.")
    return X, y, U


class PopulationRegressor:
    """One Lasso model for all samples (alpha chosen by 3-fold CV): ``theta^(i) = theta_pop``.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(50, 2)); U = np.zeros((50, 1))
    >>> PopulationRegressor().fit(X, X @ [1.0, 2.0], U).thetas_.shape
    (50, 2)
    """

    def __init__(self, *, fit_intercept: bool = True):
        self.fit_intercept = fit_intercept

    def fit(self, X, y, covariates):
        X, y, _ = _check_xy(X, y, covariates)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model_ = LassoCV(cv=3, alphas=20, fit_intercept=self.fit_intercept).fit(X, y)
        self.coef_ = self.model_.coef_.copy()
        self.thetas_ = np.tile(self.coef_, (X.shape[0], 1))
        return self

    def predict_params(self, covariates):
        return np.tile(self.coef_, (as_covariate_array(covariates).shape[0], 1))

    def predict(self, X, covariates):
        return self.model_.predict(np.asarray(X, dtype=float))


class MixtureRegressor:
    """Mixture of ``n_components`` linear regressions fitted by EM (ridge-stabilized M-step).

    E-step: ``r_ik ∝ pi_k N(y_i; <x_i, theta_k> + b_k, sigma_k^2)``; M-step: weighted
    least squares per component, ``pi_k = mean_i r_ik``, ``sigma_k^2`` the weighted residual
    variance.  Best of ``n_init`` random starts by log-likelihood.
    """

    def __init__(self, *, n_components: int = 3, n_init: int = 3, max_iter: int = 200,
                 tol: float = 1e-6, covariate_kinds=None, random_state: int | None = None):
        self.n_components = n_components
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.covariate_kinds = covariate_kinds
        self.random_state = random_state

    def _em(self, Xa, y, rng):
        n, K = len(y), self.n_components
        resp = rng.dirichlet(np.ones(K), size=n)
        prev = -np.inf
        for _ in range(self.max_iter):
            coefs, sig2 = [], []
            for k in range(K):
                w = resp[:, k] + 1e-12
                A = (Xa * w[:, None]).T @ Xa + 1e-6 * np.eye(Xa.shape[1])
                c = np.linalg.solve(A, (Xa * w[:, None]).T @ y)
                coefs.append(c)
                sig2.append(max(np.sum(w * (y - Xa @ c) ** 2) / w.sum(), 1e-8))
            coefs, sig2 = np.array(coefs), np.array(sig2)
            pi = resp.mean(axis=0)
            logp = (np.log(pi + 1e-300) - 0.5 * np.log(2 * np.pi * sig2)
                    - 0.5 * (y[:, None] - Xa @ coefs.T) ** 2 / sig2)
            mx = logp.max(axis=1, keepdims=True)
            ll = float(np.sum(mx[:, 0] + np.log(np.exp(logp - mx).sum(axis=1))))
            resp = np.exp(logp - mx)
            resp /= resp.sum(axis=1, keepdims=True)
            if abs(ll - prev) < self.tol * max(1.0, abs(ll)):
                break
            prev = ll
        return ll, coefs, resp

    def fit(self, X, y, covariates):
        X, y, U = _check_xy(X, y, covariates)
        if self.n_components < 1:
            raise ValueError(f"n_components == {self.n_components}, must be >= 1.")
        if self.n_components > X.shape[0]:
            raise ValueError(f"n_components == {self.n_components}, must be <= n == {X.shape[0]}.")
        rng = np.random.default_rng(self.random_state)
        Xa = np.hstack([X, np.ones((X.shape[0], 1))])
        best = max((self._em(Xa, y, rng) for _ in range(self.n_init)), key=lambda t: t[0])
        _, coefs, resp = best
        self.components_ = coefs[:, :-1]
        self.intercepts_ = coefs[:, -1]
        self.thetas_ = resp @ self.components_
        self.metric_ = CovariateMetric(self.covariate_kinds).fit(U)
        labels = resp.argmax(axis=1)
        if len(np.unique(labels)) > 1:
            self.gate_ = LogisticRegression(max_iter=1000).fit(self.metric_.train_.encoded, labels)
        else:
            self.gate_ = None
            self._only = int(labels[0])
        return self

    def _gate(self, covariates):
        enc = self.metric_.transform(covariates).encoded
        g = np.zeros((enc.shape[0], self.n_components))
        if self.gate_ is None:
            g[:, self._only] = 1.0
        else:
            g[:, self.gate_.classes_] = self.gate_.predict_proba(enc)
        return g

    def predict_params(self, covariates):
        return self._gate(covariates) @ self.components_

    def predict(self, X, covariates):
        g = self._gate(covariates)
        X = np.asarray(X, dtype=float)
        return np.einsum("ij,ij->i", X, g @ self.components_) + g @ self.intercepts_


class VaryingCoefficientRegressor:
    """Varying coefficients linear in the covariates: ``theta(u) = A [u; 1]``.

    ``y = <x, A [u; 1]> + b(u)`` is a linear model in the interactions ``x_j * u_l``,
    ``x_j`` and ``u_l``, fitted by ridge regression with penalty ``alpha``.
    """

    def __init__(self, *, alpha: float = 1e-3, covariate_kinds=None):
        self.alpha = alpha
        self.covariate_kinds = covariate_kinds

    def _design(self, X, enc):
        Ua = np.hstack([enc, np.ones((enc.shape[0], 1))])
        return np.hstack([(X[:, :, None] * Ua[:, None, :]).reshape(X.shape[0], -1), enc]), Ua

    def fit(self, X, y, covariates):
        X, y, U = _check_xy(X, y, covariates)
        self.metric_ = CovariateMetric(self.covariate_kinds).fit(U)
        if self.metric_.has_callable_:
            raise ValueError("covariate_kinds has a callable, VaryingCoefficientRegressor needs "
                             "'numeric' or 'categorical' covariates.")
        D, Ua = self._design(X, self.metric_.train_.encoded)
        self.model_ = Ridge(alpha=self.alpha).fit(D, y)
        p = X.shape[1]
        self.A_ = self.model_.coef_[: p * Ua.shape[1]].reshape(p, Ua.shape[1])
        self.thetas_ = Ua @ self.A_.T
        return self

    def predict_params(self, covariates):
        enc = self.metric_.transform(covariates).encoded
        return np.hstack([enc, np.ones((enc.shape[0], 1))]) @ self.A_.T

    def predict(self, X, covariates):
        enc = self.metric_.transform(covariates).encoded
        D, _ = self._design(np.asarray(X, dtype=float), enc)
        return self.model_.predict(D)
