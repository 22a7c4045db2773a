"""Algorithm 1 of Personalized Regression: the subgradient descent over Z, Q and phi.

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

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from sklearn.utils.extmath import randomized_svd
from threadpoolctl import threadpool_limits

from .metrics import CovariateMetric

__all__ = ["Factors", "fit_factors", "intercept_column_scale"]


def intercept_column_scale(X: np.ndarray, intercept_scaling: float | None) -> float:
    """The constant of the intercept's column of X: ``intercept_scaling``, or (None) ``sqrt(mean(X^2))``.

    The column ``c 1`` makes the last coordinate of Omega ``b^(i) / c``. With c the root
    mean square of X's entries, the intercept has the predictors' scale: it enters the
    curvature bound ``||Q X^(i)||^2`` of each sample's step, the init noise and the
    travel ``||theta^(i) - theta_pop||_1`` like any coefficient, instead of being a
    cheaper (or dearer) way to fit a sample than its coefficients.
    """
    if intercept_scaling is not None:
        return float(intercept_scaling)
    rms = float(np.sqrt(np.mean(np.square(X))))
    return rms if rms > 0 else 1.0


def _relative_change(A, B, C, D) -> float:
    """``||A B - C D||_F / ||A B||_F`` from q x q Gram matrices, never forming the n x p products.

    ``||AB - CD||^2 = tr(A^T A B B^T) - 2 tr(C^T A B D^T) + tr(C^T C D D^T)``.
    """
    ab = float(np.sum((A.T @ A) * (B @ B.T)))
    cd = float(np.sum((C.T @ C) * (D @ D.T)))
    cross = float(np.sum((C.T @ A) * (D @ B.T)))
    return float(np.sqrt(max(ab - 2.0 * cross + cd, 0.0) / max(ab, 1e-300)))


@dataclass(frozen=True)
class Factors:
    """The result of Algorithm 1: ``Omega = Z Q`` (n x (p + fit_intercept)), the metric weights and the last neighbour pairs.

    With an intercept the last column of Omega is ``b^(i) / intercept_scale``.
    """

    Z: np.ndarray
    Q: np.ndarray
    phi: np.ndarray
    n_iter: int
    loss_history: list
    pairs: np.ndarray
    intercept_scale: float


def fit_factors(model, X: np.ndarray, t: np.ndarray, theta_pop: np.ndarray, b_pop: float, metric: CovariateMetric,
                q: int, rng: np.random.Generator) -> Factors:
    """Run Algorithm 1 from ``theta_pop`` (and ``b_pop``) on predictors X and the prepared target t.

    ``model`` is the estimator: its hyperparameters (the module docstring names each one),
    its loss ``model._loss(eta, t)`` and gradient ``model._loss_grad(eta, t)``.
    """
    n = X.shape[0]
    scale = intercept_column_scale(X, model.intercept_scaling) if model.fit_intercept else 1.0
    Xa = np.hstack([X, np.full((n, 1), scale)]) if model.fit_intercept else X
    wd = np.dtype(model.dtype)  # precision of the n x p work arrays (X, Omega, buffer)
    Xw = Xa.astype(wd, copy=False)
    pop = np.append(theta_pop, b_pop / scale) if model.fit_intercept else theta_pop.copy()
    pa = Xa.shape[1]
    omega = pop[None, :] + model.init_noise * rng.standard_normal((n, pa))
    Us, S, Vt = randomized_svd(omega, n_components=q, random_state=int(rng.integers(2**31 - 1)))
    Z = Us * S
    Q = Vt
    phi = np.ones(metric.n_covariates_)
    alpha = float(model.learning_rate)
    train_enc = metric.train_
    k_dm = min(model.max_neighbors, n - 1)
    r = np.inf if model.radius is None else float(model.radius)

    x_sq = np.einsum("ij,ij->i", Xa, Xa)
    loss_history = []
    pairs_i = pairs_j = delta = degree = None
    theta = (Z @ Q).astype(wd)  # the only n x p arrays of the loop: theta and one buffer
    buf = np.empty_like(theta)
    it = -1
    # The loop's products are thin (rank q) and memory-bound: BLAS threads only add
    # overhead there (measured 2x slower with 2 threads on a 2-core machine).
    with threadpool_limits(limits=1, user_api="blas"):
        for it in range(model.max_iter):
            # Neighbour structure B_r(i) in Z: KD-tree, k nearest within radius r.
            if it % model.neighbor_update_every == 0:
                pairs_i, pairs_j = _z_neighbours(model, Z, k_dm, r, rng)
                # Base metrics of the pairs: computed once per rebuild, reused until the next.
                delta = metric.base_distances(train_enc, train_enc, pairs_i, pairs_j)
                degree = np.bincount(pairs_i, minlength=n) + np.bincount(pairs_j, minlength=n)

            # Loss and l1 subgradients, without forming the n x p gradient:
            # d/dZ_i = g_i Q X_i + lambda Q sign(theta_i),  d/dQ = Z^T (g X + lambda sign(theta)).
            Qw = Q.astype(wd)
            XQ = (Xw @ Qw.T).astype(float)
            eta = np.einsum("ij,ij->i", XQ, Z)
            g_eta = model._loss_grad(eta, t)
            g_Z = g_eta[:, None] * XQ
            g_Q = ((Z * g_eta[:, None]).astype(wd).T @ Xw).astype(float)
            if model.l1_penalty > 0:
                np.sign(theta, out=buf)
                if model.fit_intercept:
                    buf[:, -1] = 0.0  # the intercept is not penalized
                g_Z += model.l1_penalty * (buf @ Qw.T)
                g_Q += model.l1_penalty * (Z.astype(wd).T @ buf)
            g_Q /= n

            # Distance matching: e_ij = rho_phi(U_i, U_j) - ||Z_i - Z_j||.
            diff = np.take(Z, pairs_i, axis=0) - np.take(Z, pairs_j, axis=0)
            dz = np.sqrt(np.einsum("ij,ij->i", diff, diff))
            err = delta @ phi - dz
            g_pair = (-model.gamma * err / np.maximum(dz, 1e-12))[:, None] * diff
            for c in range(q):
                g_Z[:, c] += np.bincount(pairs_i, g_pair[:, c], minlength=n)
                g_Z[:, c] -= np.bincount(pairs_j, g_pair[:, c], minlength=n)
            g_phi = model.gamma * (err @ delta) / n + 2.0 * model.nu * (phi - 1.0)

            # Personalized rates alpha / ||theta_i - theta_pop||_1, with the safeguard: never
            # step past the inverse of a curvature bound of L^(i) (||Q X^(i)||^2 for the
            # loss, gamma * degree for the distance matching).
            np.subtract(theta, pop[None, :].astype(wd), out=buf)
            np.abs(buf, out=buf)
            travel = buf.sum(axis=1, dtype=float)
            curvature = np.einsum("ij,ij->i", XQ, XQ) + model.gamma * degree
            alpha_i = np.minimum(
                alpha / np.maximum(travel, model.min_travel), 1.0 / np.maximum(curvature, 1e-12)
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
            alpha *= model.decay
            np.matmul(Z.astype(wd), Q.astype(wd), out=theta)
            if not np.all(np.isfinite(Z)) or not np.all(np.isfinite(Q)):
                raise FloatingPointError(
                    f"Personalized Regression diverged at iteration {it}; lower learning_rate "
                    f"(now {model.learning_rate}) or gamma (now {model.gamma})."
                )
            change = _relative_change(Z_old, Q_old, Z, Q)
            if it % 10 == 0 or it == model.max_iter - 1:
                np.abs(theta, out=buf)
                if model.fit_intercept:
                    buf[:, -1] = 0.0
                obj = (
                    model._loss(eta, t).mean()
                    + model.l1_penalty * buf.sum() / n
                    + 0.5 * model.gamma * np.square(err).sum() / n
                    + model.nu * np.square(phi - 1.0).sum()
                )
                loss_history.append(float(obj))
            if change < model.tol:
                break
    n_iter = it + 1 if model.max_iter > 0 else 0
    pairs = np.stack([pairs_i, pairs_j]) if pairs_i is not None else np.zeros((2, 0), int)
    return Factors(Z=Z, Q=Q, phi=phi, n_iter=n_iter, loss_history=loss_history, pairs=pairs, intercept_scale=scale)


def _z_neighbours(model, Z, k, r, rng):
    """Pairs (i, j): the k nearest neighbours of each i in Z within radius r (KD-tree).

    Approximate when ``neighbor_eps > 0``: the j-th neighbour returned is within
    ``(1 + eps)`` times the distance of the true j-th neighbour (as the authors' code,
    which queries with eps = 1.1); exact search in q = 10 dimensions is ~8x slower.

    Plus ``n_random_neighbors`` uniform draws per sample kept when within r.
    """
    n = Z.shape[0]
    eps = model.neighbor_eps
    if eps is None:
        eps = 0.0 if Z.shape[1] <= 3 else 1.0
    dist, idx = cKDTree(Z).query(
        Z, k=k + 1, distance_upper_bound=r, eps=eps, workers=model.n_jobs or 1
    )
    idx = idx[:, 1:]
    valid = (np.isfinite(dist[:, 1:]) & (idx < n)).ravel()
    pairs_i = np.repeat(np.arange(n), k)[valid]
    pairs_j = idx.ravel()[valid]
    if model.n_random_neighbors:
        ri = np.repeat(np.arange(n), model.n_random_neighbors)
        rj = rng.integers(0, n, size=ri.size)
        keep = ri != rj
        if np.isfinite(r):
            dd = Z[ri] - Z[rj]
            keep &= np.einsum("ij,ij->i", dd, dd) < r * r
        pairs_i = np.concatenate([pairs_i, ri[keep]])
        pairs_j = np.concatenate([pairs_j, rj[keep]])
    return pairs_i, pairs_j
