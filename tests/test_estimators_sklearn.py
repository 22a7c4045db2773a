"""The estimators as scikit-learn estimators: parameters, clone, Pipeline with routed groups or covariates."""

import ast
import dataclasses
import inspect
import re

import numpy as np
import pytest
import sklearn
from sklearn.base import clone, is_classifier, is_regressor
from sklearn.exceptions import NotFittedError
from sklearn.metrics import r2_score
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import (
    check_do_not_raise_errors_in_init_or_set_params,
    check_estimator_cloneable,
    check_estimator_repr,
    check_estimators_unfitted,
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
    check_valid_tag_types,
)
from sklearn.utils.validation import check_is_fitted

import fedlrs
from fedlrs import LRSClassifier, LRSRegressor
from fedlrs.estimator_parameters import ENGINE_FIELDS, engine_config
from fedlrs.personalized import PersonalizedClassifier, PersonalizedRegressor
from fedlrs.data.personalized_simulation import simulate
from fedlrs.simulations.engine import EngineConfig
from fedlrs.data.synthetic import make_lrs_data


@pytest.fixture(scope="module")
def table():
    data = make_lrs_data(users=120, examples=20, dim=6, rank=2, sparsity=0, seed=0)
    X = data.train.X.reshape(-1, 6).numpy() * 3.0 + 1.0  # a scale and an offset for the scaler to undo
    y = data.train.y.reshape(-1).numpy()
    groups = np.repeat(np.arange(120), 20)
    return X, y, groups


@pytest.fixture
def routing():
    with sklearn.config_context(enable_metadata_routing=True):
        yield


@pytest.mark.parametrize("Estimator", [LRSRegressor, LRSClassifier, PersonalizedRegressor, PersonalizedClassifier])
def test_scikit_learn_parameter_checks_and_documentation(Estimator):
    """scikit-learn's own checks that need no fit (the others call fit(X, y) without groups or covariates)."""
    name = Estimator.__name__
    check_parameters_default_constructible(name, Estimator())
    check_no_attributes_set_in_init(name, Estimator())
    check_get_params_invariance(name, Estimator())
    check_set_params(name, Estimator())
    check_do_not_raise_errors_in_init_or_set_params(name, Estimator())
    check_estimator_cloneable(name, Estimator())
    check_estimator_repr(name, Estimator())
    check_valid_tag_types(name, Estimator())
    check_estimators_unfitted(name, Estimator())
    documented = dict(re.findall(r"\n    (\w+) : [^\n]*?default=([^\n]+)", Estimator.__doc__))
    for parameter, signature in inspect.signature(Estimator).parameters.items():
        assert f"\n    {parameter} : " in Estimator.__doc__, (name, parameter)
        # the documented default is the signature's (a changed default must change its documentation too)
        assert ast.literal_eval(documented[parameter]) == signature.default, (name, parameter)


def test_classifier_defaults_differ_only_where_meant():
    reg, clf = LRSRegressor().get_params(), LRSClassifier().get_params()
    assert set(reg) == set(clf)
    assert {k for k in reg if reg[k] != clf[k]} == {"ridge_w", "ridge_b"}
    assert clf["ridge_w"] == clf["ridge_b"] == 1e-2 and reg["mode"] == clf["mode"] == "auto"
    assert is_regressor(LRSRegressor()) and is_classifier(LRSClassifier())


def test_clone_and_set_params(table):
    X, y, groups = table
    model = LRSRegressor(rank=3, rounds=2).set_params(rank=2, sparsity=1)
    copy = clone(model)
    assert copy is not model and copy.get_params() == model.get_params()
    fitted = model.fit(X, y, groups)
    assert not hasattr(clone(fitted), "U_")
    assert np.allclose(clone(fitted).fit(X, y, groups).predict(X, groups), fitted.predict(X, groups))


def test_not_fitted_is_sklearns_error(table):
    X, _, groups = table
    assert fedlrs.NotFittedError is NotFittedError
    for model in (LRSRegressor(), LRSClassifier()):
        with pytest.raises(NotFittedError, match="not fitted yet"):
            model.predict(X, groups)
        with pytest.raises(NotFittedError):
            check_is_fitted(model)


def test_pipeline_with_routed_groups(table, routing):
    X, y, groups = table
    scaler = StandardScaler().fit(X)
    alone = LRSRegressor(rank=2, rounds=5).fit(scaler.transform(X), y, groups)
    pipe = Pipeline([("scale", StandardScaler()), ("lrs", LRSRegressor(rank=2, rounds=5).set_fit_request(groups=True)
                                                     .set_predict_request(groups=True).set_score_request(groups=True))])
    pipe.fit(X, y, groups=groups)
    np.testing.assert_allclose(pipe.predict(X, groups=groups), alone.predict(scaler.transform(X), groups))
    assert pipe.score(X, y, groups=groups) > 0.9
    with pytest.raises(ValueError, match="groups is None: predict needs the user of each row"):
        LRSRegressor(rank=2, rounds=1).fit(X, y, groups).predict(X)


def test_classifier_pipeline_with_routed_groups(routing):
    data = make_lrs_data(users=100, examples=30, dim=5, rank=2, sparsity=0, logistic=True, seed=1)
    X, y = data.train.X.reshape(-1, 5).numpy(), data.train.y.reshape(-1).numpy()
    labels, groups = np.where(y > 0.5, "yes", "no"), np.repeat([f"u{i}" for i in range(100)], 30)
    clf = LRSClassifier(rank=2, rounds=4).set_fit_request(groups=True).set_predict_request(groups=True)
    pipe = Pipeline([("scale", StandardScaler()), ("lrs", clf)]).fit(X, labels, groups=groups)
    alone = LRSClassifier(rank=2, rounds=4).fit(StandardScaler().fit_transform(X), labels, groups)
    np.testing.assert_array_equal(pipe.predict(X, groups=groups), alone.predict(StandardScaler().fit_transform(X), groups))
    assert set(pipe.predict(X, groups=groups)) == {"yes", "no"}


def test_grid_search_with_routed_groups(table, routing):
    X, y, groups = table
    model = LRSRegressor(rounds=3).set_fit_request(groups=True).set_score_request(groups=True)
    half = np.tile(np.arange(20) % 2, 120)  # every user has rows in both folds: a test user was seen in fit
    search = GridSearchCV(model, {"rank": [1, 2]}, cv=PredefinedSplit(half)).fit(X, y, groups=groups)
    assert search.best_params_ == {"rank": 2}


def test_personalized_pipeline_with_routed_covariates(routing):
    train, test = simulate(300, seed=0), simulate(100, seed=1)
    X, Xt = train.X * 5.0 + 2.0, test.X * 5.0 + 2.0
    settings = dict(rank=2, max_iter=40, random_state=0)
    model = PersonalizedRegressor(**settings).set_fit_request(covariates=True).set_predict_request(covariates=True)
    pipe = Pipeline([("scale", StandardScaler()), ("pr", model)]).fit(X, train.y, covariates=train.U)
    scaler = StandardScaler().fit(X)
    alone = clone(PersonalizedRegressor(**settings)).fit(scaler.transform(X), train.y, train.U)
    np.testing.assert_allclose(pipe.predict(Xt, covariates=test.U), alone.predict(scaler.transform(Xt), test.U))
    with pytest.raises(NotFittedError):
        clone(alone).predict(Xt, test.U)
    with pytest.raises(ValueError, match="covariates is None: predict needs the side covariates"):
        alone.predict(Xt)
    assert alone.score(scaler.transform(Xt), test.y, test.U) == pytest.approx(
        r2_score(test.y, alone.predict(scaler.transform(Xt), test.U)))


def test_every_parameter_reaches_the_engine_through_one_mapping():
    fields = {f.name for f in dataclasses.fields(EngineConfig)}
    assert set(ENGINE_FIELDS.values()) <= fields
    # mode is mapped with the privacy switch; progress and ray_workers say how to run, not what to compute
    assert set(inspect.signature(LRSRegressor).parameters) == set(ENGINE_FIELDS) | {"mode", "progress", "ray_workers"}
    with pytest.raises(ValueError, match="ray_workers"):
        engine_config(LRSRegressor(ray_workers=-1).get_params(), loss="squared")
    config = engine_config(LRSRegressor(rank=3, random_state=7, clip_g=2.5).get_params(), loss="squared")
    assert (config.rank, config.seed, config.clip_g, config.private) == (3, 7, 2.5, False)


@pytest.mark.parametrize(
    "Estimator, parameters, mode",
    [
        (LRSRegressor, {}, "ls"),
        (LRSRegressor, dict(epsilon=1.0, delta=1e-5), "gd"),
        (LRSRegressor, dict(mode="ls", epsilon=1.0, delta=1e-5), "ls"),
        (LRSRegressor, dict(mode="gd"), "gd"),
        (LRSClassifier, {}, "gd"),
    ],
)
def test_mode_auto_is_ls_only_for_a_clear_squared_loss_fit(Estimator, parameters, mode):
    loss = "logistic" if Estimator is LRSClassifier else "squared"
    assert engine_config(Estimator(**parameters).get_params(), loss=loss).mode == mode
