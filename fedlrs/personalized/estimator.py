"""Personalized Regression: one low-rank model per sample with a learned covariate metric.

Lengerich, Aragam & Xing, "Learning Sample-Specific Models with Low-Rank
Personalized Regression", NeurIPS 2019 (``shared/seeds/001_*.txt``): the estimators.
The model, the objective (Eq. 6) and Algorithm 1 are in
:mod:`fedlrs.personalized.optimizer`; the learned covariate metric in
:mod:`fedlrs.personalized.metrics`.

Defaults that differ from the paper (or from a plain column of ones), each for a reason that
does not depend on the data at hand:

* ``rank=None`` is ``min(p + fit_intercept, 10)``: the factorized parameter
  ``[theta^(i), b^(i)]`` has ``p + fit_intercept`` columns, and a smaller rank would
  make the intercept compete with the coefficients for the rank (``python
  benchmarks/pr_defaults.py --previous`` shows what it costs on the paper's simulation).
* ``intercept_scaling=None`` puts the intercept's column of X at the root mean square
  of X's entries instead of 1 (:func:`~fedlrs.personalized.optimizer.intercept_column_scale`):
  each sample's step is capped by the curvature ``||Q X^(i)||^2`` of its loss and moves
  every coordinate of Omega alike, so a column of ones far larger than the predictors
  makes the intercept the cheap way to fit each single sample's noise.
* ``n_neighbors=None`` is ``max(3, round(sqrt(n) / 2))``: Eq. (7) averages the models
  of the k_n nearest training samples, and each training model is fitted from one
  sample, so the average must grow with n (k_n -> inf, k_n / n -> 0, as for any
  consistent nearest-neighbour estimate); the paper's fixed 3 leaves the noise of
  three single-sample models in every prediction.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, LassoCV, LogisticRegression
from sklearn.metrics import accuracy_score, r2_score

from fedlrs.input_validation import as_finite_vector, as_vector

from .base import BasePersonalized

__all__ = ["PersonalizedRegressor", "PersonalizedClassifier"]


_PARAMETERS_DOC = """
    Parameters
    ----------
    rank : int or None, default=None
        Latent dimension q (``1 <= q <= p + fit_intercept``, the columns of
        ``[theta^(i), b^(i)]``); None means ``min(p + fit_intercept, 10)``.
    gamma : float, default=1.0
        Strength of the distance-matching regularizer D.
    l1_penalty : float, default=1e-3
        lambda, the l1 penalty on each theta^(i) (the intercept is not penalized).
    nu : float, default=0.1
        Strength of ``nu ||phi - 1||^2``.
    learning_rate : float, default=0.1
        alpha_0, the initial step size.
    decay : float, default=0.998
        c, the multiplicative decay of the step size per iteration (0 < c <= 1).
    min_travel : float, default=0.05
        Floor of ``||theta^(i) - theta_pop||_1`` in the personalized rate.
    radius : float or None, default=None
        r of ``B_r(i) = {j : ||Z^(i) - Z^(j)|| < r}``; None: no limit.
    max_neighbors : int, default=20
        At most this many nearest Z-neighbours per sample enter D^(i) (keeps memory O(n)).
    n_random_neighbors : int, default=0
        Extra partners per sample drawn uniformly and kept when within radius r (a
        stochastic sample of the rest of B_r(i)).
    n_neighbors : int or None, default=None
        k_n, training samples averaged to predict a new sample (paper: 3); None means
        ``max(3, round(sqrt(n) / 2))`` for n training samples (the module docstring says why).
    covariate_kinds : sequence or None, default=None
        Per covariate ``"numeric"`` (``|a - b|``), ``"categorical"`` (``1{a != b}``) or a
        vectorised callable ``d(a, b)``; None: all numeric.
    population_alpha : float or None, default=None
        Lasso penalty of the population estimator; None: chosen by 3-fold ``LassoCV``.
    init_noise : float, default=1e-3
        eps, standard deviation of the noise added to theta_pop before the PCA.
    max_iter : int, default=1000
        Iteration cap of Algorithm 1.
    tol : float, default=1e-6
        Stop when ``||Omega_t - Omega_{t-1}|| / ||Omega_{t-1}|| < tol``.
    neighbor_update_every : int, default=10
        Rebuild the KD-tree over Z every this many iterations.
    neighbor_eps : float or None, default=None
        Approximation factor of the Z-neighbour search (0: exact; see ``optimizer._z_neighbours``).
        None: exact for rank <= 3, where a KD-tree is fast, and 1.0 above, where exact
        search degrades (8x slower at q = 10, n = 10,000).
    n_jobs : int or None, default=None
        Workers of the KD-tree queries (None: 1, -1: all cores).
    fit_intercept : bool, default=True
        Add a personalized intercept b^(i).
    intercept_scaling : float or None, default=None
        The constant c of the intercept's column of X (Omega's last column is then
        ``b^(i) / c``, as ``intercept_scaling`` of scikit-learn's liblinear models);
        None: the root mean square of X's entries (the module docstring says why); 1.0
        is a column of ones.
    dtype : {"float64", "float32"}, default="float64"
        Precision of the n x p work arrays (a copy of X, Omega and one buffer); "float32"
        halves their memory and roughly halves the time per iteration for large n * p.
        Z, Q, phi and the returned attributes are float64 either way.
    random_state : int or None, default=None
        Seed (>= 0) of the initialization noise and the random neighbours; None: fresh entropy.
"""


class PersonalizedRegressor(RegressorMixin, BasePersonalized):
    __doc__ = """Low-rank Personalized Regression with squared loss (Lengerich et al., NeurIPS 2019).

    Fits ``y^(i) ~ <X^(i), theta^(i)> + b^(i)`` with ``theta^(i) = Q^T Z^(i)``, minimizing
    ``1/n sum_i [ 1/2 (y^(i) - <X^(i), theta^(i)> - b^(i))^2 + lambda ||theta^(i)||_1 + D^(i) ]
    + nu ||phi - 1||^2`` by Algorithm 1 (see :mod:`fedlrs.personalized.optimizer` for every term).
    ``covariates`` is passed to ``fit``, ``predict`` and ``score`` (in a Pipeline, routed with
    ``set_fit_request(covariates=True)`` and friends).
""" + _PARAMETERS_DOC + """
    Attributes
    ----------
    thetas_ : ndarray (n, p)
        Personalized coefficients theta^(i).
    intercepts_ : ndarray (n,)
    Z_ : ndarray (n, q)
    Q_ : ndarray (q, p + fit_intercept)
        theta^(i) = Q_^T Z_^(i) (the intercept is the last column when fitted).
    phi_ : ndarray (k,)
        Non-negative weight of each covariate in rho_phi: its learned importance.
    population_coef_, population_intercept_ :
        The population (Lasso) estimator theta_pop.
    rank_, n_neighbors_ : int
        The rank q and the k_n in use (the defaults resolved for the data).
    intercept_scale_ : float
        The constant c of the intercept's column in use.

    Examples
    --------
    >>> import numpy as np
    >>> from fedlrs.personalized import PersonalizedRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(-1, 1, (200, 2)); U = rng.uniform(0, 1, (200, 1))
    >>> y = X[:, 0] * U[:, 0] + X[:, 1]
    >>> model = PersonalizedRegressor(rank=2, max_iter=50, random_state=0).fit(X, y, U)
    >>> model.thetas_.shape, model.predict(X[:5], U[:5]).shape
    ((200, 2), (5,))
    """

    def _fit_target(self, y, rows):
        return as_finite_vector(y, rows), {}

    def _population(self, X, y):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            if self.population_alpha is None:
                model = LassoCV(cv=3, alphas=20, fit_intercept=self.fit_intercept, random_state=0)
            else:
                model = Lasso(alpha=self.population_alpha, fit_intercept=self.fit_intercept)
            model.fit(X, y)
        self.population_model_ = model
        return np.asarray(model.coef_, dtype=float).ravel(), float(model.intercept_)

    def _loss(self, eta, y):
        return 0.5 * np.square(eta - y)

    def _loss_grad(self, eta, y):
        return eta - y

    def predict(self, X, covariates=None) -> np.ndarray:
        """``y_hat = <X, theta> + b`` with theta, b averaged over the k_n nearest training samples."""
        return self._decision(X, covariates)

    def score(self, X, y, covariates=None, sample_weight=None) -> float:
        """R^2 of ``predict(X, covariates)`` against ``y``."""
        return float(r2_score(y, self.predict(X, covariates), sample_weight=sample_weight))


class PersonalizedClassifier(ClassifierMixin, BasePersonalized):
    __doc__ = """Low-rank Personalized logistic regression (binary), same model and Algorithm 1.

    The loss is ``l = log(1 + exp(eta)) - y eta`` with ``eta = <X, theta^(i)> + b^(i)`` and
    ``y in {0, 1}`` (``classes_[1]`` is the positive class); the population estimator is
    l1-penalized logistic regression with ``C = 1 / (n * population_alpha)``
    (None: ``C = 1``).  The attributes are those of :class:`PersonalizedRegressor`,
    plus ``classes_``.
""" + _PARAMETERS_DOC + """
    Examples
    --------
    >>> import numpy as np
    >>> from fedlrs.personalized import PersonalizedClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3)); U = rng.uniform(0, 1, (200, 1))
    >>> y = (X[:, 0] * np.sign(U[:, 0] - 0.5) > 0).astype(int)
    >>> clf = PersonalizedClassifier(rank=2, max_iter=50, random_state=0).fit(X, y, U)
    >>> clf.predict_proba(X[:2], U[:2]).shape
    (2, 2)
    """

    def _fit_target(self, y, rows):
        y = as_vector(y, rows, "y")
        classes = np.unique(y)
        if len(classes) != 2:
            raise ValueError(f"y has {len(classes)} classes, must have exactly 2 for PersonalizedClassifier.")
        return (y == classes[1]).astype(float), {"classes_": classes}

    def _population(self, X, y):
        C = 1.0 if self.population_alpha is None else 1.0 / max(len(y) * self.population_alpha, 1e-12)
        model = LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", fit_intercept=self.fit_intercept, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X, y)
        self.population_model_ = model
        return np.asarray(model.coef_, dtype=float).ravel(), float(np.ravel(model.intercept_)[0])

    def _loss(self, eta, y):
        return np.logaddexp(0.0, eta) - y * eta

    def _loss_grad(self, eta, y):
        return 1.0 / (1.0 + np.exp(-eta)) - y

    def decision_function(self, X, covariates=None) -> np.ndarray:
        """Linear predictor ``<X, theta> + b`` with the k_n-nearest-neighbour averaged model."""
        return self._decision(X, covariates)

    def predict_proba(self, X, covariates=None) -> np.ndarray:
        """Class probabilities (m x 2), ``P(classes_[1]) = sigmoid(<X, theta> + b)``."""
        p1 = 1.0 / (1.0 + np.exp(-self.decision_function(X, covariates)))
        return np.column_stack([1.0 - p1, p1])

    def predict(self, X, covariates=None) -> np.ndarray:
        """Most probable class for each sample."""
        scores = self.decision_function(X, covariates)
        return self.classes_[(scores > 0).astype(int)]

    def score(self, X, y, covariates=None, sample_weight=None) -> float:
        """Accuracy of ``predict(X, covariates)`` against ``y``."""
        return float(accuracy_score(y, self.predict(X, covariates), sample_weight=sample_weight))
