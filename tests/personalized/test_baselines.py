import numpy as np
import pytest

from fedlrs.personalized.baselines import MixtureRegressor, PopulationRegressor, VaryingCoefficientRegressor
from fedlrs.data.personalized_simulation import simulate


@pytest.fixture(scope="module")
def data():
    return simulate(600, seed=0), simulate(300, seed=1)


def test_population_is_one_model(data):
    tr, te = data
    m = PopulationRegressor(fit_intercept=False).fit(tr.X, tr.y, tr.U)
    assert np.allclose(m.thetas_, m.thetas_[0])
    np.testing.assert_allclose(m.coef_, tr.theta.mean(0), atol=0.1)


def test_varying_coefficients_recovers_linear_truth():
    rng = np.random.default_rng(0)
    X, U = rng.normal(size=(500, 2)), rng.uniform(size=(500, 1))
    theta = np.column_stack([2 * U[:, 0], 1 - U[:, 0]])
    y = (X * theta).sum(1)
    m = VaryingCoefficientRegressor().fit(X, y, U)
    np.testing.assert_allclose(m.thetas_, theta, atol=1e-2)
    np.testing.assert_allclose(m.predict_params(U[:5]), theta[:5], atol=1e-2)


def test_mixture_finds_two_regimes():
    rng = np.random.default_rng(0)
    X, U = rng.uniform(-1, 1, size=(600, 1)), rng.uniform(size=(600, 1))
    slope = np.where(U[:, 0] > 0.5, 2.0, -2.0)
    y = slope * X[:, 0] + 0.05 * rng.normal(size=600)
    m = MixtureRegressor(n_components=2, random_state=0).fit(X, y, U)
    assert sorted(np.round(m.components_[:, 0]).tolist()) == [-2.0, 2.0]
    Xt = np.array([[1.0], [1.0]])
    pred = m.predict(Xt, np.array([[0.1], [0.9]]))
    assert pred[0] < -1 and pred[1] > 1


def test_baselines_beat_population_on_simulation(data):
    tr, te = data
    mse = {}
    for name, m in {"pop": PopulationRegressor(fit_intercept=False), "mr": MixtureRegressor(random_state=0),
                    "vc": VaryingCoefficientRegressor()}.items():
        m.fit(tr.X, tr.y, tr.U)
        mse[name] = np.mean((m.predict(te.X, te.U) - te.y) ** 2)
        assert m.thetas_.shape == (600, 2)
    assert mse["mr"] < mse["pop"] and mse["vc"] < mse["pop"]


def test_mixture_validates():
    tr = simulate(5, seed=0)
    with pytest.raises(ValueError, match="n_components == 6, must be <= n == 5"):
        MixtureRegressor(n_components=6).fit(tr.X, tr.y, tr.U)
