import numpy as np
import pandas as pd
import pytest

from fedlrs import LRSClassifier, LRSRegressor, NotFittedError
from fedlrs.data.synthetic import make_lrs_data


def long_table(data, users, m, d):
    X = data.train.X.reshape(-1, d).numpy()
    y = data.train.y.reshape(-1).numpy()
    groups = np.repeat([f"user-{i}" for i in range(users)], m)
    return X, y, groups


@pytest.fixture(scope="module")
def regression():
    data = make_lrs_data(users=300, examples=30, dim=12, rank=2, sparsity=1, seed=0)
    X, y, groups = long_table(data, 300, 30, 12)
    return data, X, y, groups


def test_fit_predict_recovers_user_parameters(regression):
    data, X, y, groups = regression
    model = LRSRegressor(rank=2, sparsity=1, rounds=10).fit(pd.DataFrame(X), pd.Series(y), pd.Series(groups))
    order = np.argsort([f"user-{i}" for i in range(300)])  # groups_ is sorted
    theta_star = data.theta_star.numpy()[order]
    rel = ((model.thetas_ - theta_star) ** 2).sum(1) / (theta_star**2).sum(1)
    assert rel.mean() < 1e-2
    assert model.U_.shape == (12, 2) and model.W_.shape == (300, 2) and model.B_.shape == (300, 12)
    assert np.mean((model.predict(X, groups) - y) ** 2) < 0.01


def test_personalize_fits_a_new_user_without_changing_u(regression):
    data, X, y, groups = regression
    model = LRSRegressor(rank=2, sparsity=1, rounds=10).fit(X, y, groups)
    U_before = model.U_.copy()
    new = make_lrs_data(users=300, examples=30, dim=12, rank=2, sparsity=1, seed=0)  # same U*, same users
    personal = model.personalize(new.train.X[5].numpy(), new.train.y[5].numpy())
    assert np.allclose(model.U_, U_before)
    theta_star = new.theta_star[5].numpy()
    assert ((personal.theta - theta_star) ** 2).sum() / (theta_star**2).sum() < 1e-2
    assert np.count_nonzero(personal.b) <= 1


def test_classifier_predict_proba_and_labels():
    data = make_lrs_data(users=300, examples=40, dim=8, rank=2, sparsity=1, logistic=True, seed=1)
    X, y, groups = long_table(data, 300, 40, 8)
    labels = np.where(y > 0.5, "yes", "no")
    model = LRSClassifier(rank=2, sparsity=1, rounds=8).fit(X, labels, groups)
    proba = model.predict_proba(X[:50], groups[:50])
    assert proba.shape == (50, 2) and np.allclose(proba.sum(1), 1)
    assert set(model.predict(X[:50], groups[:50])) <= {"yes", "no"}
    order = np.argsort([f"user-{i}" for i in range(300)])
    theta_star = data.theta_star.numpy()[order]
    rows_user = np.searchsorted(model.groups_, groups)
    bayes = np.where(np.einsum("nd,nd->n", X, theta_star[rows_user]) > 0, "yes", "no")
    assert (model.predict(X, groups) == labels).mean() > (bayes == labels).mean() - 0.03


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda X, y, g: (X[:, :, None], y, g), "X has 3 dimensions"),
        (lambda X, y, g: (X, y[:-1], g), "y has 8999 rows, must match X's 9000"),
        (lambda X, y, g: (X, y, g[:-1]), "groups has 8999 rows"),
        (lambda X, y, g: (np.where(np.arange(X.size).reshape(X.shape) == 5, np.nan, X), y, g), "X has a NaN"),
        (lambda X, y, g: (X, np.where(np.arange(y.size) == 3, np.inf, y), g), "y has a NaN or infinite value .first in row 3"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(regression, change, message):
    _, X, y, groups = regression
    with pytest.raises(ValueError, match=message):
        LRSRegressor(rank=2, sparsity=1, rounds=1).fit(*change(X, y, groups))


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(rank=0), "rank == 0, must be >= 1"), (dict(rank=13), "rank == 13, must be <= the dimension d == 12"), (dict(sparsity=12), "sparsity == 12, must be < the dimension")],
)
def test_bad_hyperparameters_are_refused(regression, kwargs, message):
    _, X, y, groups = regression
    with pytest.raises(ValueError, match=message):
        LRSRegressor(**{"rank": 2, "rounds": 1, **kwargs}).fit(X, y, groups)


def test_predict_before_fit_and_unknown_group_and_empty_user(regression):
    _, X, y, groups = regression
    with pytest.raises(NotFittedError, match="not fitted yet"):
        LRSRegressor().predict(X, groups)
    model = LRSRegressor(rank=2, sparsity=1, rounds=1).fit(X, y, groups)
    with pytest.raises(ValueError, match="groups has a user not seen in fit: 'stranger'"):
        model.predict(X[:2], np.array(["user-1", "stranger"]))
    with pytest.raises(ValueError, match="X_new has no rows"):
        model.personalize(np.zeros((0, 12)), np.zeros(0))
    with pytest.raises(ValueError, match="X has 11 features, the model was fitted with 12"):
        model.predict(X[:2, :11], groups[:2])


def test_classifier_needs_two_labels():
    X = np.random.default_rng(0).normal(size=(20, 3))
    with pytest.raises(ValueError, match="y has 3 distinct labels"):
        LRSClassifier(rank=1).fit(X, np.arange(20) % 3, np.arange(20) % 2)


def test_private_fit_spends_its_budget_and_writes_the_report(tmp_path):
    data = make_lrs_data(users=3000, examples=10, dim=10, rank=2, sparsity=0, seed=2)
    X, y, groups = long_table(data, 3000, 10, 10)
    model = LRSRegressor(rank=2, sparsity=0, rounds=5, epsilon=4.0, delta=1e-6, noise_seed=0).fit(X, y, groups)
    assert 3.9 <= model.epsilon_ <= 4.0
    # the init, then per round the clip histogram of adaptive clipping and the round itself
    assert [e.release_id for e in model.ledger_.events][:3] == ["init", "round-1-clip", "round-1"] and len(model.ledger_) == 11
    assert [e.kind for e in model.ledger_.events].count("clip") == 5
    report = model.write_privacy_report(tmp_path)
    assert (tmp_path / "privacy_report.json").exists() and (tmp_path / "epsilon.png").exists()
    assert report["epsilon"]["rdp"] == model.epsilon_
    with pytest.raises(ValueError, match="give both for a private fit"):
        LRSRegressor(epsilon=1.0).fit(X, y, groups)


def test_private_defaults_are_unit_free():
    """The same users in other units (X x10, y x100), same noise seed: the same U and the same relative error (issue 13)."""
    import torch

    from fedlrs.core import principal_angle_distance

    data = make_lrs_data(users=3000, examples=5, dim=10, rank=2, sparsity=0, unit_weights=True, seed=7)
    X, y, groups = long_table(data, 3000, 5, 10)
    fits = [LRSRegressor(rank=2, sparsity=0, epsilon=2.0, delta=1e-6, noise_seed=3).fit(X * a, y * b, groups) for a, b in ((1, 1), (10, 100))]
    assert principal_angle_distance(torch.as_tensor(fits[0].U_), torch.as_tensor(fits[1].U_)) < 1e-3
    assert principal_angle_distance(torch.as_tensor(fits[0].U_), data.U_star) < 0.05
    assert np.allclose(fits[1].thetas_ * 10 / 100, fits[0].thetas_, atol=1e-3)


def test_private_ls_is_unit_free_and_beats_its_old_fixed_bounds():
    """Private mode "ls" (clip_quantile > 0): each user sends A_i / ||A_i||_F and c_i / ||A_i||_F, so X x10, y x100 give the
    same U (same noise seed); with the fixed bounds clip_a, clip_c (clip_quantile 0) the error depends on the units."""
    import torch

    from fedlrs.core import mean_user_mse, principal_angle_distance

    data = make_lrs_data(users=4000, examples=5, dim=10, rank=2, sparsity=0, unit_weights=True, test_examples=20, seed=7)
    X, y, _ = long_table(data, 4000, 5, 10)
    groups = np.repeat(np.arange(4000), 5)  # thetas_ in the users' order

    def fit(a: float, b: float, quantile: float):
        model = LRSRegressor(rank=2, sparsity=0, mode="ls", clip_quantile=quantile, epsilon=4.0, delta=1e-6, noise_seed=3).fit(X * a, y * b, groups)
        return model, float(mean_user_mse(data.test, torch.as_tensor(model.thetas_) * a / b))

    (plain, mse), (scaled, mse_scaled) = fit(1, 1, 0.5), fit(10, 100, 0.5)
    assert principal_angle_distance(torch.as_tensor(plain.U_), torch.as_tensor(scaled.U_)) < 1e-4
    assert mse_scaled / mse < 1.01 and principal_angle_distance(torch.as_tensor(plain.U_), data.U_star) < 0.1
    assert {e.kind for e in plain.ledger_.events} == {"init", "round"}  # no clip histograms: nothing to learn about the units
    fixed = [fit(a, b, 0.0)[1] for a, b in ((1, 1), (10, 100))]  # clip_a 300, clip_c 50: in the data's units
    assert max(fixed) > 10 * min(fixed) and mse < 1.05 * min(fixed)  # unit-free: as good as the fixed bounds in their best units


@pytest.mark.parametrize("mode", ["ls", "gd"])
def test_ridges_mean_the_same_in_any_units(mode):
    """The ridges are in units of each user's tr(X_i^T X_i) / (d m_i) (the ls solve's of tr(A / N)): X x 1e-3 or y x 1e-3
    give the same model (thetas in their units). With absolute ridges X x 1e-3 made the ridge as large as the data."""
    data = make_lrs_data(users=600, examples=5, dim=10, rank=2, sparsity=1, unit_weights=True, seed=7)
    X, y, _ = long_table(data, 600, 5, 10)
    groups = np.repeat(np.arange(600), 5)
    fits = [LRSRegressor(rank=2, sparsity=1, mode=mode).fit(X * a, y * b, groups).thetas_ * a / b for a, b in ((1, 1), (1e-3, 1), (1, 1e-3), (1e3, 1e-2))]
    for other in fits[1:]:
        assert np.allclose(other, fits[0], atol=1e-6 * np.abs(fits[0]).max())


def test_classifier_ridges_mean_the_same_in_any_units():
    data = make_lrs_data(users=300, examples=20, dim=6, rank=2, sparsity=0, logistic=True, seed=3)
    X, y, _ = long_table(data, 300, 20, 6)
    groups = np.repeat(np.arange(300), 20)
    small, plain = (LRSClassifier(rank=2, rounds=3).fit(X * a, y, groups) for a in (1e-3, 1))
    assert np.allclose(small.decision_function(X * 1e-3, groups), plain.decision_function(X, groups), atol=1e-6)
