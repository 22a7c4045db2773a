import numpy as np
import pytest

from fedlrs.data.personalized_simulation import simulate, true_parameters


def test_true_parameters_match_section_3_1():
    theta = true_parameters(np.array([0.2, 0.7]))
    np.testing.assert_allclose(theta, [[0.2, 0.1 * np.sin(0.2)], [0.7, 1 + 0.1 * np.sin(0.7)]])


def test_simulate_shapes_and_noise_level():
    d = simulate(20000, seed=1)
    assert d.X.shape == (20000, 2) and d.U.shape == (20000, 1)
    assert d.X.min() >= -1 and d.X.max() <= 1 and d.U.min() >= 0 and d.U.max() <= 1
    resid = d.y - np.einsum("ij,ij->i", d.X, d.theta)
    assert abs(resid.std() - 0.1) < 0.005


def test_simulate_is_reproducible_and_validates():
    np.testing.assert_array_equal(simulate(5, seed=3).y, simulate(5, seed=3).y)
    with pytest.raises(ValueError, match="n == 0, must be >= 1"):
        simulate(0)
