"""Hostile input to the estimators (issue 17, item 4): odd user labels, non-integer parameters, overflowing values.

Every case must end in a ValueError that names the argument and the value or the row,
before any numeric code runs, in private and non-private fits alike.
"""

import numpy as np
import pandas as pd
import pytest

from fedlrs import LRSClassifier, LRSRegressor
from fedlrs.personalized import PersonalizedRegressor
from fedlrs.data.personalized_simulation import simulate
from fedlrs.data.synthetic import make_lrs_data

USERS, EXAMPLES, DIM = 60, 12, 5
PRIVATE = dict(epsilon=8.0, delta=1e-5, noise_seed=0)


@pytest.fixture(scope="module")
def table():
    data = make_lrs_data(users=USERS, examples=EXAMPLES, dim=DIM, rank=2, sparsity=0, seed=0)
    return data.train.X.reshape(-1, DIM).numpy(), data.train.y.reshape(-1).numpy()


def labels_per_row(labels):
    column = np.empty(USERS * EXAMPLES, dtype=object)
    column[:] = [label for label in labels for _ in range(EXAMPLES)]
    return column


def test_mixed_int_and_str_labels_are_distinct_users(table):
    X, y = table
    labels = [i if i % 2 else f"{i}" for i in range(USERS)]  # 1, "2", 3, "4", ...: mixed types
    labels[0] = 1.5
    groups = labels_per_row(labels)
    model = LRSRegressor(rank=2, rounds=3).fit(X, y, list(groups))
    assert len(model.groups_) == USERS and {type(g) for g in model.groups_} == {int, str, float}
    # the same rows under plain integer labels give the same users' models, in label order
    reference = LRSRegressor(rank=2, rounds=3).fit(X, y, np.repeat(np.arange(USERS), EXAMPLES))
    np.testing.assert_allclose(model.predict(X, groups), reference.predict(X, np.repeat(np.arange(USERS), EXAMPLES)), atol=1e-8)
    with pytest.raises(ValueError, match="groups has a user not seen in fit: '1' \\(row 0\\)"):
        model.predict(X[:1], ["1"])  # "1" is not 1


def test_tuple_labels_and_a_pandas_series(table):
    X, y = table
    groups = labels_per_row([("site", i % 3, i) for i in range(USERS)])
    model = LRSRegressor(rank=2, rounds=2).fit(X, y, pd.Series(list(groups)))
    assert model.predict(X[:EXAMPLES], list(groups[:EXAMPLES])).shape == (EXAMPLES,)


@pytest.mark.parametrize("missing", [None, np.nan, float("nan"), pd.NA, pd.NaT])
@pytest.mark.parametrize("privacy", [{}, PRIVATE], ids=["clear", "private"])
def test_a_missing_label_is_refused_with_its_row(table, missing, privacy):
    X, y = table
    groups = labels_per_row([f"u{i}" for i in range(USERS)])
    groups[37] = missing
    with pytest.raises(ValueError, match=r"groups row 37 is missing \(.*\): every row must name its user"):
        LRSRegressor(rank=2, rounds=1, **privacy).fit(X, y, groups)
    numeric = np.repeat(np.arange(USERS, dtype=float), EXAMPLES)
    numeric[5] = np.nan
    with pytest.raises(ValueError, match="groups row 5 is missing"):
        LRSRegressor(rank=2, rounds=1, **privacy).fit(X, y, numeric)


def test_a_missing_or_unhashable_label_at_predict(table):
    X, y = table
    groups = np.repeat(np.arange(USERS), EXAMPLES)
    model = LRSRegressor(rank=2, rounds=1).fit(X, y, groups)
    with pytest.raises(ValueError, match="groups row 1 is missing"):
        model.predict(X[:2], [0, None])
    with pytest.raises(ValueError, match="groups row 1 holds an unhashable list"):
        LRSRegressor(rank=2, rounds=1).fit(X[:2], y[:2], [0, [1]])


@pytest.mark.parametrize(
    "Estimator, parameters, message",
    [
        (LRSRegressor, dict(rank=2.5), r"rank == 2.5, must be an integer >= 1\."),
        (LRSRegressor, dict(rank=True), r"rank == True, must be an integer >= 1\."),
        (LRSRegressor, dict(sparsity=1.0), r"sparsity == 1.0, must be an integer >= 0\."),
        (LRSRegressor, dict(rounds="3"), r"rounds == '3', must be an integer >= 0\."),
        (LRSRegressor, dict(random_state=0.5), r"random_state == 0.5, must be an integer >= 0\."),
        (LRSRegressor, dict(noise_seed=-2), r"noise_seed == -2, must be >= -1\."),
        (LRSRegressor, dict(ridge_w=float("nan")), r"ridge_w == nan, must be a finite number\."),
        (LRSRegressor, dict(mode=None), r"mode == None, must be one of 'auto', 'ls', 'gd'\."),
        (LRSClassifier, dict(rank=1.5), r"rank == 1.5, must be an integer >= 1\."),
        (LRSRegressor, dict(epsilon=float("inf"), delta=1e-5), r"epsilon == inf, must be a finite number\."),
        (PersonalizedRegressor, dict(rank=2.5), r"rank == 2.5, must be an integer >= 1\."),
        (PersonalizedRegressor, dict(max_iter=10.0), r"max_iter == 10.0, must be an integer >= 0\."),
        (PersonalizedRegressor, dict(n_neighbors=2.5), r"n_neighbors == 2.5, must be an integer >= 1\."),
        (PersonalizedRegressor, dict(random_state=-1), r"random_state == -1, must be >= 0\."),
    ],
)
def test_integer_and_real_parameters_are_checked(table, Estimator, parameters, message):
    X, y = table
    if Estimator is PersonalizedRegressor:
        d = simulate(40, seed=0)
        X, y, side = d.X, d.y, d.U
    else:
        y = (y > 0).astype(int) if Estimator is LRSClassifier else y
        side = np.repeat(np.arange(USERS), EXAMPLES)
    with pytest.raises(ValueError, match=message):
        Estimator(**parameters).fit(X, y, side)


@pytest.mark.parametrize("value", [1e200, 1e300, -1e300])
@pytest.mark.parametrize("privacy", [{}, PRIVATE, dict(mode="ls", **PRIVATE)], ids=["clear", "private-gd", "private-ls"])
def test_a_row_whose_statistics_overflow_is_refused_with_its_row(table, value, privacy):
    X, y = table
    groups = labels_per_row([f"u{i}" for i in range(USERS)])
    big = X.copy()
    big[50, 3] = value
    with pytest.raises(ValueError, match=r"X row 50 \(user 'u4'\) has a value of magnitude .*e\+(200|300): values above .* overflow float64"):
        LRSRegressor(rank=2, rounds=2, **privacy).fit(big, y, groups)
    target = y.copy()
    target[7] = value
    with pytest.raises(ValueError, match=r"y row 7 \(user 'u0'\) has a value of magnitude"):
        LRSRegressor(rank=2, rounds=2, **privacy).fit(X, target, groups)


@pytest.mark.parametrize("privacy, degree", [({}, 4), (PRIVATE, 8)], ids=["clear", "private"])
def test_values_just_below_the_limit_fit(table, privacy, degree):
    """The limit is ``(max / terms^(degree/2))^(1/degree)``; degree 8 when private (a user's moments are clipped)."""
    X, y = table
    groups = np.repeat(np.arange(USERS), EXAMPLES)
    limit = (np.finfo(np.float64).max / (EXAMPLES * (DIM + 2)) ** (degree / 2)) ** (1 / degree)
    scale = 0.5 * limit / max(np.abs(X).max(), np.abs(y).max())
    model = LRSRegressor(rank=2, rounds=2, **privacy).fit(X * scale, y * scale, groups)
    assert np.isfinite(model.U_).all() and np.isfinite(model.thetas_).all()
    with pytest.raises(ValueError, match=r"X row \d+ \(user 0\) has a value of magnitude .*: values above .* overflow float64"):
        LRSRegressor(rank=2, rounds=2, **privacy).fit(X * scale * 4, y * scale, groups)


def test_float32_has_a_far_lower_limit(table):
    X, y = table
    big = X.copy()
    big[3, 0] = 1e12
    with pytest.raises(ValueError, match=r"X row 3 \(user 0\) has a value of magnitude 1e\+12: .* overflow float32"):
        LRSRegressor(rank=2, rounds=1, dtype="float32").fit(big, y, np.repeat(np.arange(USERS), EXAMPLES))


def test_personalize_and_personalized_regression_refuse_overflow(table):
    X, y = table
    model = LRSRegressor(rank=2, rounds=1).fit(X, y, np.repeat(np.arange(USERS), EXAMPLES))
    big = X[:EXAMPLES].copy()
    big[2, 1] = 1e200
    with pytest.raises(ValueError, match="X_new row 2 has a value of magnitude 1e\\+200"):
        model.personalize(big, y[:EXAMPLES])
    d = simulate(50, seed=0)
    Xp = d.X.copy()
    Xp[9, 0] = 1e300
    with pytest.raises(ValueError, match="X row 9 has a value of magnitude 1e\\+300"):
        PersonalizedRegressor(max_iter=2).fit(Xp, d.y, d.U)
