"""Personalized Regression: one low-rank model per sample with a learned covariate metric.

Lengerich, Aragam & Xing, "Learning Sample-Specific Models with Low-Rank
Personalized Regression", NeurIPS 2019 (``shared/seeds/001_*.txt``), Eqs. (3)-(7)
and Algorithm 1.

Model.  ``theta^(i) = Q^T Z^(i)`` with ``Z^(i) in R^q``, ``Q in R^{q x p}``; the
prediction for sample ``i`` is ``f(<X^(i), theta^(i)> + b^(i))`` (``b^(i)`` is a
personalized intercept, the last coordinate of the factorized parameter when
``fit_intercept=True``).

Objective (Eq. 6), divided by n so that hyperparameters do not depend on n::

    L = 1/n sum_i [ l(X^(i), Y^(i), theta^(i)) + lambda ||theta^(i)||_1 + D^(i)(Z, phi) ]
        + nu ||phi - 1||^2,
    D^(i) = gamma/2 sum_{j in B(i)} ( rho_phi(U^(i), U^(j)) - ||Z^(i) - Z^(j)||_2 )^2,

with ``rho_phi`` the learned metric of :mod:`fedlrs.personalized.metrics` and
``B(i)`` the neighbours of ``i`` within radius ``r`` in Z (Eq. 4), found with a
KD-tree over Z and capped at ``max_neighbors`` so that the regularizer costs
O(n * max_neighbors), never O(n^2).  We read the paper's ``||Z^(i) - Z^(j)||_2``
as the Euclidean norm (not squared), as in the authors' code: a metric matched to
a metric.

Optimization (Algorithm 1).  theta^(i) <- theta_pop + N(0, eps^2) (theta_pop: Lasso
or l1-logistic regression), Z, Q <- rank-q truncated SVD of Omega (PCA without
centring, so that theta^(i) = Q^T Z^(i) exactly), phi <- 1; then subgradient steps

    Z^(i) <- Z^(i) - alpha_i [ d/dZ^(i) sum_j D^(j) + Q (dl_i + lambda sign(theta^(i))) ],
    Q     <- Q     - alpha   1/n sum_i Z^(i) (dl_i + lambda sign(theta^(i)))^T,
    phi   <- max(0, phi - alpha [ 1/n d/dphi sum_i D^(i) + 2 nu (phi - 1) ]),
    alpha <- c alpha,

(the loss and l1 parts of these gradients are computed through ``X Q^T`` and
``sign(Omega) Q^T``, never as an n x p gradient matrix), with the personalized learning rate
``alpha_i = alpha / max(||theta^(i) - theta_pop||_1, min_travel)``: the paper's
``alpha / ||theta^(i) - theta_pop||_1`` with a floor, because at the start every
theta^(i) sits within eps of theta_pop and the raw rate would be ~ alpha / eps.
Each step is also capped by the inverse of a curvature bound of the sample's loss
(``||Q X^(i)||^2 + gamma * degree(i)`` for Z^(i), ``1/n sum_i ||Z^(i)||^2 ||X^(i)||^2``
for Q), so that no step overshoots, whatever the scale of X; and the rows of Q are
renormalized to unit norm after each step (the scale moves into Z, Omega is unchanged),
which removes the Z <-> Q rescaling degeneracy and is the normalization Eq. (2) assumes.
(The Z^(i) row is separable, so its step uses the per-sample gradient of
Algorithm 1, line 9, i.e. n times the gradient of the n-scaled objective.)

Prediction for a new sample (Eq. 7): the average of the models of its ``k_n``
(``n_neighbors``) nearest training samples under ``rho_phi``.
"""

from __future__ import annotations

import numbers
import warnings
from typing import Callable, Sequence

import numpy as np
from scipy.spatial import cKDTree
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Lasso, LassoCV, LogisticRegression
from sklearn.utils.extmath import randomized_svd
from threadpoolctl import threadpool_limits

from .metrics import CovariateMetric, as_covariate_array

__all__ = ["PersonalizedRegressor", "PersonalizedClassifier"]


def _check_int(name: str, value, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} == {value!r}, must be an integer >= {low}.")
    if value < low:
        raise ValueError(f"{name} == {value}, must be >= {low}.")


def _check_float(name: str, value, low: float, *, strict: bool = False, high: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise TypeError(f"{name} == {value!r}, must be a finite number.")
    if (strict and value <= low) or (not strict and value < low):
        raise ValueError(f"{name} == {value}, must be {'>' if strict else '>='} {low}.")
    if high is not None and value > high:
        raise ValueError(f"{name} == {value}, must be <= {high}.")


def _relative_change(A, B, C, D) -> float:
    """``||A B - C D||_F / ||A B||_F`` from q x q Gram matrices, never forming the n x p products.

    ``||AB - CD||^2 = tr(A^T A B B^T) - 2 tr(C^T A B D^T) + tr(C^T C D D^T)``.
    """
    ab = float(np.sum((A.T @ A) * (B @ B.T)))
    cd = float(np.sum((C.T @ C) * (D @ D.T)))
    cross = float(np.sum((C.T @ A) * (D @ B.T)))
    return float(np.sqrt(max(ab - 2.0 * cross + cd, 0.0) / max(ab, 1e-300)))


class _BasePersonalized:
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
        n_neighbors: int = 3,
        covariate_kinds: Sequence[str | Callable] | None = None,
        population_alpha: float | None = None,
        init_noise: float = 1e-3,
        max_iter: int = 1000,
        tol: float = 1e-6,
        neighbor_update_every: int = 10,
        neighbor_eps: float | None = None,
        n_jobs: int | None = None,
        fit_intercept: bool = True,
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
        self.dtype = dtype
        self.random_state = random_state

    # ------------------------------------------------------------ hooks
    def _prepare_target(self, y: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _population(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:  # pragma: no cover
        raise NotImplementedError

    def _loss_grad(self, eta: np.ndarray, y: np.ndarray) -> np.ndarray:  # pragma: no cover
        """d l / d eta for the linear predictor eta."""
        raise NotImplementedError

    def _loss(self, eta: np.ndarray, y: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    # ------------------------------------------------------------ validation
    def _validate_params(self, n: int, p: int) -> int:
        if self.rank is not None:
            _check_int("rank", self.rank, 1)
            if self.rank > p:
                raise ValueError(f"rank == {self.rank}, must be <= p == {p} (the number of predictors).")
        _check_float("gamma", self.gamma, 0.0)
        _check_float("l1_penalty", self.l1_penalty, 0.0)
        _check_float("nu", self.nu, 0.0)
        _check_float("learning_rate", self.learning_rate, 0.0, strict=True)
        _check_float("decay", self.decay, 0.0, strict=True, high=1.0)
        _check_float("min_travel", self.min_travel, 0.0, strict=True)
        if self.radius is not None:
            _check_float("radius", self.radius, 0.0, strict=True)
        _check_int("max_neighbors", self.max_neighbors, 1)
        _check_int("n_random_neighbors", self.n_random_neighbors, 0)
        _check_int("n_neighbors", self.n_neighbors, 1)
        if self.n_neighbors > n:
            raise ValueError(
                f"n_neighbors == {self.n_neighbors}, must be <= n == {n} (the number of training samples)."
            )
        if self.population_alpha is not None:
            _check_float("population_alpha", self.population_alpha, 0.0)
        _check_float("init_noise", self.init_noise, 0.0, strict=True)
        _check_int("max_iter", self.max_iter, 0)
        _check_float("tol", self.tol, 0.0)
        _check_int("neighbor_update_every", self.neighbor_update_every, 1)
        if self.neighbor_eps is not None:
            _check_float("neighbor_eps", self.neighbor_eps, 0.0)
        if self.n_jobs is not None and (isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, numbers.Integral)
                                        or self.n_jobs == 0 or self.n_jobs < -1):
            raise ValueError(f"n_jobs == {self.n_jobs!r}, must be None, -1 or a positive integer.")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype == {self.dtype!r}, must be 'float64' or 'float32'.")
        if n < 2:
            raise ValueError(f"n == {n}, must be >= 2 samples.")
        return self.rank if self.rank is not None else min(p, 10)

    @staticmethod
    def _check_X(X, name: str = "X") -> np.ndarray:
        X = np.asarray(X, dtype=float)
        if X.ndim != 2:
            raise ValueError(f"{name}.ndim == {X.ndim}, must be 2 (samples x predictors).")
        if not np.all(np.isfinite(X)):
            raise ValueError(f"{name} has NaN or inf values, must be finite.")
        return X

    def _check_is_fitted(self) -> None:
        if not hasattr(self, "thetas_"):
            raise RuntimeError(f"This {type(self).__name__} is not fitted yet; call fit(X, y, covariates) first.")

    # ------------------------------------------------------------ fit
    def fit(self, X, y, covariates) -> "_BasePersonalized":
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
        X = self._check_X(X)
        n, p = X.shape
        y = np.asarray(y).reshape(-1)
        if y.shape[0] != n:
            raise ValueError(f"len(y) == {y.shape[0]}, must equal X.shape[0] == {n}.")
        U = as_covariate_array(covariates)
        if U.shape[0] != n:
            raise ValueError(f"covariates.shape[0] == {U.shape[0]}, must equal X.shape[0] == {n}.")
        q = self._validate_params(n, p)
        t = self._prepare_target(y)
        metric = CovariateMetric(self.covariate_kinds).fit(U)
        rng = np.random.default_rng(self.random_state)

        # Population model and initialization (Alg. 1, lines 1-3).
        theta_pop, b_pop = self._population(X, t)
        Xa = np.hstack([X, np.ones((n, 1))]) if self.fit_intercept else X
        wd = np.dtype(self.dtype)  # precision of the n x p work arrays (X, Omega, buffer)
        Xw = Xa.astype(wd, copy=False)
        pop = np.append(theta_pop, b_pop) if self.fit_intercept else theta_pop.copy()
        pa = Xa.shape[1]
        omega = pop[None, :] + self.init_noise * rng.standard_normal((n, pa))
        Us, S, Vt = randomized_svd(omega, n_components=q, random_state=int(rng.integers(2**31 - 1)))
        Z = Us * S
        Q = Vt
        phi = np.ones(metric.n_covariates_)
        alpha = float(self.learning_rate)
        train_enc = metric.train_
        k_dm = min(self.max_neighbors, n - 1)
        r = np.inf if self.radius is None else float(self.radius)

        x_sq = np.einsum("ij,ij->i", Xa, Xa)
        self.loss_history_ = []
        pairs_i = pairs_j = delta = degree = None
        theta = (Z @ Q).astype(wd)  # the only n x p arrays of the loop: theta and one buffer
        buf = np.empty_like(theta)
        it = -1
        # The loop's products are thin (rank q) and memory-bound: BLAS threads only add
        # overhead there (measured 2x slower with 2 threads on a 2-core machine).
        with threadpool_limits(limits=1, user_api="blas"):
            for it in range(self.max_iter):
                # Neighbour structure B_r(i) in Z: KD-tree, k nearest within radius r.
                if it % self.neighbor_update_every == 0:
                    pairs_i, pairs_j = self._z_neighbours(Z, k_dm, r, rng)
                    # Base metrics of the pairs: computed once per rebuild, reused until the next.
                    delta = metric.base_distances(train_enc, train_enc, pairs_i, pairs_j)
                    degree = np.bincount(pairs_i, minlength=n) + np.bincount(pairs_j, minlength=n)

                # Loss and l1 subgradients, without forming the n x p gradient:
                # d/dZ_i = g_i Q X_i + lambda Q sign(theta_i),  d/dQ = Z^T (g X + lambda sign(theta)).
                Qw = Q.astype(wd)
                XQ = (Xw @ Qw.T).astype(float)
                eta = np.einsum("ij,ij->i", XQ, Z)
                g_eta = self._loss_grad(eta, t)
                g_Z = g_eta[:, None] * XQ
                g_Q = ((Z * g_eta[:, None]).astype(wd).T @ Xw).astype(float)
                if self.l1_penalty > 0:
                    np.sign(theta, out=buf)
                    if self.fit_intercept:
                        buf[:, -1] = 0.0  # the intercept is not penalized
                    g_Z += self.l1_penalty * (buf @ Qw.T)
                    g_Q += self.l1_penalty * (Z.astype(wd).T @ buf)
                g_Q /= n

                # Distance matching: e_ij = rho_phi(U_i, U_j) - ||Z_i - Z_j||.
                diff = np.take(Z, pairs_i, axis=0) - np.take(Z, pairs_j, axis=0)
                dz = np.sqrt(np.einsum("ij,ij->i", diff, diff))
                err = delta @ phi - dz
                g_pair = (-self.gamma * err / np.maximum(dz, 1e-12))[:, None] * diff
                for c in range(q):
                    g_Z[:, c] += np.bincount(pairs_i, g_pair[:, c], minlength=n)
                    g_Z[:, c] -= np.bincount(pairs_j, g_pair[:, c], minlength=n)
                g_phi = self.gamma * (err @ delta) / n + 2.0 * self.nu * (phi - 1.0)

                # Personalized rates alpha / ||theta_i - theta_pop||_1, with the safeguard: never
                # step past the inverse of a curvature bound of L^(i) (||Q X^(i)||^2 for the
                # loss, gamma * degree for the distance matching).
                np.subtract(theta, pop[None, :].astype(wd), out=buf)
                np.abs(buf, out=buf)
                travel = buf.sum(axis=1, dtype=float)
                curvature = np.einsum("ij,ij->i", XQ, XQ) + self.gamma * degree
                alpha_i = np.minimum(
                    alpha / np.maximum(travel, self.min_travel), 1.0 / np.maximum(curvature, 1e-12)
                )
                Z_old, Q_old = Z, Q
                Z = Z - alpha_i[:, None] * g_Z
                # Same safeguard for Q: 1/n sum_i ||Z^(i)||^2 ||X^(i)||^2 bounds its curvature.
                q_curv = float(np.mean(np.einsum("ij,ij->i", Z, Z) * x_sq))
                Q = Q - min(alpha, 1.0 / max(q_curv, 1e-12)) * g_Q
                # Keep the rows of Q at unit norm (the scale moves into Z, theta is unchanged):
                # removes the Z <-> Q rescaling degeneracy; Eq. (2) of the paper assumes it.
                q_norm = np.maximum(np.linalg.norm(Q, axis=1), 1e-12)
                Q = Q / q_norm[:, None]
                Z = Z * q_norm[None, :]
                phi = np.maximum(phi - alpha * g_phi, 0.0)
                alpha *= self.decay
                np.matmul(Z.astype(wd), Q.astype(wd), out=theta)
                if not np.all(np.isfinite(Z)) or not np.all(np.isfinite(Q)):
                    raise FloatingPointError(
                        f"Personalized Regression diverged at iteration {it}; lower learning_rate "
                        f"(now {self.learning_rate}) or gamma (now {self.gamma})."
                    )
                change = _relative_change(Z_old, Q_old, Z, Q)
                if it % 10 == 0 or it == self.max_iter - 1:
                    np.abs(theta, out=buf)
                    if self.fit_intercept:
                        buf[:, -1] = 0.0
                    obj = (
                        self._loss(eta, t).mean()
                        + self.l1_penalty * buf.sum() / n
                        + 0.5 * self.gamma * np.square(err).sum() / n
                        + self.nu * np.square(phi - 1.0).sum()
                    )
                    self.loss_history_.append(float(obj))
                if change < self.tol:
                    break
        self.n_iter_ = it + 1 if self.max_iter > 0 else 0

        self.Z_ = Z
        self.Q_ = Q
        self.phi_ = phi
        theta = Z @ Q
        self.thetas_ = theta[:, :p].copy()
        self.intercepts_ = theta[:, p].copy() if self.fit_intercept else np.zeros(n)
        self.population_coef_ = theta_pop
        self.population_intercept_ = float(b_pop)
        self.rank_ = q
        self.n_features_in_ = p
        self.metric_ = metric
        self.covariate_pairs_ = np.stack([pairs_i, pairs_j]) if pairs_i is not None else np.zeros((2, 0), int)
        return self

    def _z_neighbours(self, Z, k, r, rng):
        """Pairs (i, j): the k nearest neighbours of each i in Z within radius r (KD-tree).

        Approximate when ``neighbor_eps > 0``: the j-th neighbour returned is within
        ``(1 + eps)`` times the distance of the true j-th neighbour (as the authors' code,
        which queries with eps = 1.1); exact search in q = 10 dimensions is ~8x slower.

        Plus ``n_random_neighbors`` uniform draws per sample kept when within r.
        """
        n = Z.shape[0]
        eps = self.neighbor_eps
        if eps is None:
            eps = 0.0 if Z.shape[1] <= 3 else 1.0
        dist, idx = cKDTree(Z).query(
            Z, k=k + 1, distance_upper_bound=r, eps=eps, workers=self.n_jobs or 1
        )
        idx = idx[:, 1:]
        valid = (np.isfinite(dist[:, 1:]) & (idx < n)).ravel()
        pairs_i = np.repeat(np.arange(n), k)[valid]
        pairs_j = idx.ravel()[valid]
        if self.n_random_neighbors:
            ri = np.repeat(np.arange(n), self.n_random_neighbors)
            rj = rng.integers(0, n, size=ri.size)
            keep = ri != rj
            if np.isfinite(r):
                dd = Z[ri] - Z[rj]
                keep &= np.einsum("ij,ij->i", dd, dd) < r * r
            pairs_i = np.concatenate([pairs_i, ri[keep]])
            pairs_j = np.concatenate([pairs_j, rj[keep]])
        return pairs_i, pairs_j

    # ------------------------------------------------------------ predict
    def kneighbors(self, covariates) -> np.ndarray:
        """Indices (m x k_n) of the k_n nearest training samples under the learned metric rho_phi."""
        self._check_is_fitted()
        enc = self.metric_.transform(covariates)
        return self.metric_.kneighbors(enc, self.phi_, self.n_neighbors)

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
        X = self._check_X(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X.shape[1] == {X.shape[1]}, must be {self.n_features_in_} as in fit.")
        U = as_covariate_array(covariates)
        if U.shape[0] != X.shape[0]:
            raise ValueError(f"covariates.shape[0] == {U.shape[0]}, must equal X.shape[0] == {X.shape[0]}.")
        idx = self.kneighbors(U)
        theta = self.thetas_[idx].mean(axis=1)
        b = self.intercepts_[idx].mean(axis=1)
        return np.einsum("ij,ij->i", X, theta) + b


class PersonalizedRegressor(_BasePersonalized):
    """Low-rank Personalized Regression with squared loss (Lengerich et al., NeurIPS 2019).

    Fits ``y^(i) ~ <X^(i), theta^(i)> + b^(i)`` with ``theta^(i) = Q^T Z^(i)``, minimizing
    ``1/n sum_i [ 1/2 (y^(i) - <X^(i), theta^(i)> - b^(i))^2 + lambda ||theta^(i)||_1 + D^(i) ]
    + nu ||phi - 1||^2`` by Algorithm 1 (see the module docstring for every term).

    Parameters
    ----------
    rank : int or None
        Latent dimension q (``1 <= q <= p``); None means ``min(p, 10)``.
    gamma : float
        Strength of the distance-matching regularizer D.
    l1_penalty : float
        lambda, the l1 penalty on each theta^(i) (the intercept is not penalized).
    nu : float
        Strength of ``nu ||phi - 1||^2``.
    learning_rate, decay : float
        alpha_0 and its multiplicative decay c per iteration.
    min_travel : float
        Floor of ``||theta^(i) - theta_pop||_1`` in the personalized rate.
    radius : float or None
        r of ``B_r(i) = {j : ||Z^(i) - Z^(j)|| < r}``; None: no limit.
    max_neighbors : int
        At most this many nearest Z-neighbours per sample enter D^(i) (keeps memory O(n)).
    n_random_neighbors : int
        Extra partners per sample drawn uniformly and kept when within radius r (a
        stochastic sample of the rest of B_r(i)); 0 by default.
    n_neighbors : int
        k_n, training samples averaged to predict a new sample (paper: 3).
    covariate_kinds : sequence or None
        Per covariate ``"numeric"`` (``|a - b|``), ``"categorical"`` (``1{a != b}``) or a
        vectorised callable ``d(a, b)``; None: all numeric.
    population_alpha : float or None
        Lasso penalty of the population estimator; None: chosen by 3-fold ``LassoCV``.
    init_noise : float
        eps, standard deviation of the noise added to theta_pop before the PCA.
    max_iter, tol : int, float
        Iteration cap; stop when ``||Omega_t - Omega_{t-1}|| / ||Omega_{t-1}|| < tol``.
    neighbor_update_every : int
        Rebuild the KD-tree over Z every this many iterations.
    neighbor_eps : float or None
        Approximation factor of the Z-neighbour search (0: exact; see ``_z_neighbours``).
        None: exact for rank <= 3, where a KD-tree is fast, and 1.0 above, where exact
        search degrades (8x slower at q = 10, n = 10,000).
    n_jobs : int or None
        Workers of the KD-tree queries (None: 1, -1: all cores).
    fit_intercept : bool
        Add a personalized intercept b^(i).
    dtype : {"float64", "float32"}
        Precision of the n x p work arrays (a copy of X, Omega and one buffer); "float32"
        halves their memory and roughly halves the time per iteration for large n * p.
        Z, Q, phi and the returned attributes are float64 either way.
    random_state : int or None
        Seed of the initialization noise.

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

    def _prepare_target(self, y):
        try:
            y = y.astype(float)
        except (TypeError, ValueError):
            raise ValueError("y must be numeric for PersonalizedRegressor.") from None
        if not np.all(np.isfinite(y)):
            raise ValueError("y has NaN or inf values, must be finite.")
        return y

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

    def predict(self, X, covariates) -> np.ndarray:
        """``y_hat = <X, theta> + b`` with theta, b averaged over the k_n nearest training samples."""
        return self._decision(X, covariates)


class PersonalizedClassifier(_BasePersonalized):
    """Low-rank Personalized logistic regression (binary), same model and Algorithm 1.

    The loss is ``l = log(1 + exp(eta)) - y eta`` with ``eta = <X, theta^(i)> + b^(i)`` and
    ``y in {0, 1}`` (``classes_[1]`` is the positive class); the population estimator is
    l1-penalized logistic regression with ``C = 1 / (n * population_alpha)``
    (None: ``C = 1``).  Parameters and attributes are those of
    :class:`PersonalizedRegressor`, plus ``classes_``.

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

    def _prepare_target(self, y):
        classes = np.unique(y)
        if len(classes) != 2:
            raise ValueError(
                f"y has {len(classes)} classes, must have exactly 2 for PersonalizedClassifier."
            )
        self.classes_ = classes
        return (y == classes[1]).astype(float)

    def _population(self, X, y):
        C = 1.0 if self.population_alpha is None else 1.0 / max(len(y) * self.population_alpha, 1e-12)
        model = LogisticRegression(l1_ratio=1.0, C=C, solver="liblinear", fit_intercept=self.fit_intercept)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X, y)
        self.population_model_ = model
        return np.asarray(model.coef_, dtype=float).ravel(), float(np.ravel(model.intercept_)[0])

    def _loss(self, eta, y):
        return np.logaddexp(0.0, eta) - y * eta

    def _loss_grad(self, eta, y):
        return 1.0 / (1.0 + np.exp(-eta)) - y

    def decision_function(self, X, covariates) -> np.ndarray:
        """Linear predictor ``<X, theta> + b`` with the k_n-nearest-neighbour averaged model."""
        return self._decision(X, covariates)

    def predict_proba(self, X, covariates) -> np.ndarray:
        """Class probabilities (m x 2), ``P(classes_[1]) = sigmoid(<X, theta> + b)``."""
        p1 = 1.0 / (1.0 + np.exp(-self.decision_function(X, covariates)))
        return np.column_stack([1.0 - p1, p1])

    def predict(self, X, covariates) -> np.ndarray:
        """Most probable class for each sample."""
        return self.classes_[(self.decision_function(X, covariates) > 0).astype(int)]
