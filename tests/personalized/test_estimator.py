import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from fedlrs.personalized import PersonalizedClassifier, PersonalizedRegressor
from fedlrs.data.personalized_simulation import simulate


@pytest.fixture(scope="module")
def fitted():
    d = simulate(800, seed=0)
    m = PersonalizedRegressor(rank=2, fit_intercept=False, max_iter=600, random_state=0)
    return d, m.fit(d.X, d.y, d.U)


def test_fitted_attributes(fitted):
    d, m = fitted
    assert m.thetas_.shape == (800, 2)
    assert m.Z_.shape == (800, 2) and m.Q_.shape == (2, 2)
    np.testing.assert_allclose(m.Z_ @ m.Q_, m.thetas_)
    assert m.phi_.shape == (1,) and np.all(m.phi_ >= 0)


def test_recovery_beats_population(fitted):
    d, m = fitted
    rec = np.linalg.norm(m.thetas_ - d.theta)
    pop = np.linalg.norm(m.population_coef_[None, :] - d.theta)
    assert rec < 0.75 * pop


def test_prediction_beats_population(fitted):
    d, m = fitted
    te = simulate(500, seed=1)
    mse = np.mean((m.predict(te.X, te.U) - te.y) ** 2)
    pop = np.mean((m.population_model_.predict(te.X) - te.y) ** 2)
    assert mse < 0.5 * pop


def test_predict_averages_k_nearest_training_models(fitted):
    d, m = fitted
    Uq = np.array([[0.3], [0.9]])
    idx = m.kneighbors(Uq)
    k = m.n_neighbors_
    assert k == round(np.sqrt(800) / 2) and idx.shape == (2, k)
    brute = np.argsort(np.abs(d.U[:, 0][None, :] - Uq) * m.phi_[0], axis=1)[:, :k]
    np.testing.assert_array_equal(np.sort(idx, axis=1), np.sort(brute, axis=1))
    np.testing.assert_allclose(m.predict_params(Uq), m.thetas_[brute].mean(axis=1))
    Xq = np.array([[1.0, 2.0], [0.5, -1.0]])
    np.testing.assert_allclose(m.predict(Xq, Uq), (Xq * m.thetas_[brute].mean(axis=1)).sum(1))


def test_neighbour_structure_is_sparse(fitted):
    d, m = fitted
    # at most max_neighbors pairs per sample, never n x n
    assert m.covariate_pairs_.shape[1] <= 800 * m.max_neighbors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rank=4), r"rank == 4, must be <= 3 \(p == 2 predictors \+ the intercept\)"),
        (dict(rank=3, fit_intercept=False), r"rank == 3, must be <= 2 \(p == 2 predictors\)"),
        (dict(rank=0), r"rank == 0, must be >= 1"),
        (dict(rank=2.5), r"rank == 2.5, must be an integer >= 1\."),
        (dict(n_neighbors=51), r"n_neighbors == 51, must be <= n == 50"),
        (dict(covariate_kinds=["ordinal"]), r"covariate_kinds\[0\] == 'ordinal'"),
        (dict(learning_rate=0.0), r"learning_rate == 0.0, must be > 0"),
        (dict(decay=1.5), r"decay == 1.5, must be <= 1.0"),
        (dict(n_jobs=0), r"n_jobs == 0, must be None, -1 or a positive integer"),
        (dict(neighbor_eps=-1.0), r"neighbor_eps == -1.0, must be >= 0.0"),
    ],
)
def test_bad_parameters(kwargs, match):
    d = simulate(50, seed=0)
    with pytest.raises(ValueError, match=match):
        PersonalizedRegressor(**kwargs).fit(d.X, d.y, d.U)


def test_nan_covariates_and_shapes():
    d = simulate(50, seed=0)
    U = d.U.copy()
    U[7, 0] = np.nan
    with pytest.raises(ValueError, match=r"covariates\[7, 0\] is NaN"):
        PersonalizedRegressor(max_iter=1).fit(d.X, d.y, U)
    with pytest.raises(ValueError, match="covariates.shape\\[0\\] == 49"):
        PersonalizedRegressor(max_iter=1).fit(d.X, d.y, d.U[:49])
    with pytest.raises(NotFittedError, match="not fitted"):
        PersonalizedRegressor().predict(d.X, d.U)


def test_init_only_stores_arguments():
    m = PersonalizedRegressor(rank=-5, gamma="x")
    assert m.rank == -5 and m.gamma == "x" and not hasattr(m, "thetas_")


def test_categorical_covariate_and_intercept():
    rng = np.random.default_rng(0)
    n = 400
    group = rng.choice(["a", "b"], size=n)
    noise = rng.uniform(size=n)
    X = rng.normal(size=(n, 2))
    slope = np.where(group == "a", 1.0, -1.0)
    y = slope * X[:, 0] + 0.5 + 0.05 * rng.normal(size=n)
    U = np.column_stack([group, noise]).astype(object)
    m = PersonalizedRegressor(rank=2, covariate_kinds=["categorical", "numeric"], max_iter=400, random_state=0)
    m.fit(X, y, U)
    assert m.phi_[0] > m.phi_[1]  # the informative covariate weighs more
    theta = m.predict_params(np.array([["a", 0.5], ["b", 0.5]], dtype=object))
    assert theta[0, 0] > 0.5 and theta[1, 0] < -0.5
    # the intercept's column is at the scale of X (root mean square), and b^(i) is read back at scale 1
    assert m.intercept_scale_ == pytest.approx(np.sqrt(np.mean(X**2)))
    assert abs(np.mean(m.predict_intercepts(U)) - 0.5) < 0.1
    ones = PersonalizedRegressor(rank=2, covariate_kinds=["categorical", "numeric"], max_iter=0, intercept_scaling=1.0).fit(X, y, U)
    scaled = PersonalizedRegressor(rank=2, covariate_kinds=["categorical", "numeric"], max_iter=0, intercept_scaling=4.0).fit(X, y, U)
    assert ones.intercept_scale_ == 1.0 and scaled.Q_.shape == (2, 3)
    # before any step both start at the population model: the same intercepts whatever the scale
    np.testing.assert_allclose(ones.intercepts_.mean(), scaled.intercepts_.mean(), atol=1e-2)


def test_classifier_learns_sign_flip():
    rng = np.random.default_rng(0)
    n = 600
    X = rng.normal(size=(n, 2))
    U = rng.uniform(size=(n, 1))
    w = np.where(U[:, 0] > 0.5, 3.0, -3.0)
    y = np.where(rng.uniform(size=n) < 1 / (1 + np.exp(-w * X[:, 0])), "yes", "no")
    clf = PersonalizedClassifier(rank=2, max_iter=400, random_state=0).fit(X, y, U)
    Xt = rng.normal(size=(400, 2))
    Ut = rng.uniform(size=(400, 1))
    yt = np.where(np.where(Ut[:, 0] > 0.5, 3.0, -3.0) * Xt[:, 0] > 0, "yes", "no")
    pop = clf.population_model_.predict(Xt) == (yt == "yes")
    # the population model cannot represent the sign flip (about chance level)
    assert np.mean(clf.predict(Xt, Ut) == yt) > np.mean(pop) + 0.1
    proba = clf.predict_proba(Xt, Ut)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    with pytest.raises(ValueError, match="y has 3 classes"):
        PersonalizedClassifier().fit(X[:3], ["a", "b", "c"], U[:3])


def test_no_n_by_n_matrix_for_large_n():
    import tracemalloc

    n = 20_000  # an n x n float64 matrix would take 3.2 GB
    d = simulate(n, seed=0)
    tracemalloc.start()
    m = PersonalizedRegressor(rank=2, fit_intercept=False, max_iter=3, population_alpha=1e-3, random_state=0)
    m.fit(d.X, d.y, d.U)
    m.predict(d.X[:1000], d.U[:1000])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 100 * 2**20  # memory is O(n (p + q + max_neighbors)), far below n^2
    assert m.covariate_pairs_.shape[1] <= n * m.max_neighbors


def test_callable_metric_matches_builtin_numeric():
    d = simulate(300, seed=0)
    f = lambda a, b: np.abs(np.asarray(a, float) - np.asarray(b, float))  # noqa: E731
    kw = dict(rank=2, fit_intercept=False, random_state=0, max_iter=100, population_alpha=1e-3)
    a = PersonalizedRegressor(covariate_kinds=[f], **kw).fit(d.X, d.y, d.U)
    b = PersonalizedRegressor(**kw).fit(d.X, d.y, d.U)
    np.testing.assert_allclose(a.thetas_, b.thetas_)
    np.testing.assert_allclose(a.predict(d.X[:40], d.U[:40]), b.predict(d.X[:40], d.U[:40]))


def test_float32_work_arrays_match_float64():
    d = simulate(300, seed=0)
    kw = dict(rank=2, fit_intercept=True, random_state=0, max_iter=50, population_alpha=1e-3)
    a = PersonalizedRegressor(dtype="float32", **kw).fit(d.X, d.y, d.U)
    b = PersonalizedRegressor(**kw).fit(d.X, d.y, d.U)
    assert a.thetas_.dtype == np.float64
    np.testing.assert_allclose(a.thetas_, b.thetas_, atol=1e-2)
    with pytest.raises(ValueError, match="dtype == 'float16', must be one of 'float64', 'float32'"):
        PersonalizedRegressor(dtype="float16").fit(d.X, d.y, d.U)


@pytest.mark.slow
@pytest.mark.parametrize("n", [500, 2000])
def test_defaults_reach_r2_092_on_the_papers_simulation(n):
    """``PersonalizedRegressor()`` with no arguments: test R^2 >= 0.92 on every draw (issue 14)."""
    for draw in range(3):
        train = simulate(n, seed=np.random.SeedSequence([draw, 0]))
        test = simulate(500, seed=np.random.SeedSequence([draw, 1]))
        model = PersonalizedRegressor().fit(train.X, train.y, train.U)
        assert model.rank_ == 3 and model.n_neighbors_ == round(np.sqrt(n) / 2)
        r2 = np.corrcoef(model.predict(test.X, test.U), test.y)[0, 1] ** 2
        assert r2 >= 0.92, (n, draw, r2)
