import numpy as np
import pytest

from fedlrs.personalized.metrics import CovariateMetric


def test_numeric_and_categorical_base_distances():
    U = np.array([[0.0, "a"], [1.0, "b"], [0.25, "a"]], dtype=object)
    m = CovariateMetric(["numeric", "categorical"]).fit(U)
    d = m.base_distances(m.train_, m.train_, np.array([0, 0]), np.array([1, 2]))
    np.testing.assert_allclose(d, [[1.0, 1.0], [0.25, 0.0]])


def test_unseen_category_is_at_distance_one():
    m = CovariateMetric(["categorical"]).fit(np.array([["a"], ["b"]], dtype=object))
    q = m.transform(np.array([["zzz"]], dtype=object))
    d = m.base_distances(q, m.train_, np.array([0, 0]), np.array([0, 1]))
    np.testing.assert_allclose(d[:, 0], [1.0, 1.0])


def test_kdtree_matches_brute_force_with_callable():
    rng = np.random.default_rng(0)
    U = rng.uniform(size=(300, 2))
    phi = np.array([2.0, 0.5])
    Uq = rng.uniform(size=(20, 2))
    tree = CovariateMetric(["numeric", "numeric"]).fit(U)
    brute = CovariateMetric(["numeric", lambda a, b: np.abs(a.astype(float) - b.astype(float))]).fit(U)
    a = tree.kneighbors(tree.transform(Uq), phi, 3)
    b = brute.kneighbors(brute.transform(Uq), phi, 3, chunk=7)
    expected = np.argsort((np.abs(Uq[:, None, :] - U[None]) * phi).sum(-1), axis=1)[:, :3]
    np.testing.assert_array_equal(a, expected)
    np.testing.assert_array_equal(b, expected)


def test_nan_covariate_is_refused():
    U = np.array([[0.0], [np.nan]])
    with pytest.raises(ValueError, match=r"covariates\[1, 0\] is NaN"):
        CovariateMetric().fit(U)


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="covariate_kinds\\[0\\] == 'ordinal', must be"):
        CovariateMetric(["ordinal"]).fit(np.zeros((3, 1)))


def test_string_column_declared_numeric_is_refused():
    U = np.array([[1.0, "x"], [2.0, "y"]], dtype=object)
    with pytest.raises(ValueError, match="declare it 'categorical'"):
        CovariateMetric().fit(U)


def test_wrong_number_of_kinds():
    with pytest.raises(ValueError, match="len\\(covariate_kinds\\) == 1, must equal"):
        CovariateMetric(["numeric"]).fit(np.zeros((3, 2)))
