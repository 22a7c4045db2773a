import math
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from fedlrs.privacy import DpEvent, GaussianNoise, Ledger, compute_epsilon
from fedlrs.privacy.distributed import (ShareRelease, ToppedUpGaussianSumRelease, ddg_rdp, ddg_tau, grid_bits,
                                        quantize_unit, sample_discrete_gaussian, server_view_epsilon, share_variance)


@settings(max_examples=300, deadline=None)
@given(hnp.arrays("float64", st.integers(1, 300), elements=st.floats(-1e3, 1e3)), st.integers(8, 28),
       st.sampled_from([0.5, 1.0, 3.0]))
def test_quantized_contribution_stays_within_its_bound(array, bits, norm):
    """The rounded vector's norm is <= 2**bits whenever the input is within (or is clipped to) the unit ball."""
    current = float(np.linalg.norm(array))
    v = array if current == 0 else array * (norm / current)
    if 2 ** bits <= math.sqrt(v.size) / 2:
        return
    k = quantize_unit(v, bits=bits)
    assert k.dtype == np.int64 and k.shape == (v.size,)
    assert sum(int(x) ** 2 for x in k) <= 4 ** bits
    if norm <= 0.5:  # inside the budget nothing is shrunk: plain nearest rounding
        assert np.abs(k - v * 2 ** bits).max() <= 0.5


def test_quantization_keeps_a_symmetric_matrix_symmetric_and_is_close():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(12, 12))
    a = (a + a.T) / (2 * np.linalg.norm(a + a.T) / 2)
    k = quantize_unit(a.reshape(-1), bits=20).reshape(12, 12)
    assert np.array_equal(k, k.T)
    assert np.abs(k / 2 ** 20 - a).max() < 2e-5


def test_grid_bits_leaves_room_for_the_cohort_and_the_noise():
    assert grid_bits(cohort=5) == 27  # 5 * 2**27 < 2**30 <= 5 * 2**28
    bits = grid_bits(cohort=100, noise_std_units=2.0)
    assert (100 + 40 * 2.0) * 2 ** bits < 2 ** 30 <= (100 + 40 * 2.0) * 2 ** (bits + 1)
    with pytest.raises(ValueError, match="bits"):
        grid_bits(cohort=2 ** 25)


def _dgauss_pmf(sigma2, xs):
    weights = np.exp(-np.arange(-200, 201) ** 2 / (2 * sigma2))
    return np.exp(-np.asarray(xs) ** 2 / (2 * sigma2)) / weights.sum()


@pytest.mark.parametrize("sigma2", [1, 3])
def test_discrete_gaussian_has_the_exact_distribution(sigma2):
    x = sample_discrete_gaussian(40_000, sigma2=sigma2, rng=random.Random(sigma2))
    values = np.arange(-4, 5)
    observed = np.array([(x == v).sum() for v in values])
    expected = 40_000 * _dgauss_pmf(sigma2, values)
    chi2 = (((observed - expected) ** 2) / expected).sum()
    assert chi2 < 30  # 9 cells: p-value ~ 4e-4 at 30
    assert abs(x.mean()) < 0.03


def test_large_discrete_gaussian_moments_and_os_entropy():
    sigma2 = 2 ** 46
    x = sample_discrete_gaussian(8_000, sigma2=sigma2)  # os.urandom
    assert x.dtype == np.int64
    assert x.std() / math.sqrt(sigma2) == pytest.approx(1.0, rel=0.05)
    assert ((x / x.std()) ** 4).mean() == pytest.approx(3.0, rel=0.15)
    with pytest.raises(ValueError, match="sigma2"):
        sample_discrete_gaussian(3, sigma2=0)


def test_share_variance_rounds_up():
    s2 = share_variance(noise_std_units=1.3, bits=10, shares=7)
    assert s2 * 7 >= (1.3 * 2 ** 10) ** 2 and (s2 - 1) * 7 < (1.3 * 2 ** 10) ** 2


def test_tau_golden_values():
    assert ddg_tau(sigma=3.0, shares=1) == 0.0
    assert ddg_tau(sigma=0.5, shares=2) == pytest.approx(10 * math.exp(-math.pi ** 2 / 4))
    assert ddg_tau(sigma=0.5, shares=3) == pytest.approx(10 * (math.exp(-math.pi ** 2 / 4) + math.exp(-math.pi ** 2 / 3)))


def test_ddg_rdp_is_the_gaussian_for_large_shares_and_larger_for_small_ones():
    orders = np.array([2.0, 8.0, 32.0])
    # 5 shares of std sigma give std sqrt(5) sigma: z = sqrt(5) sigma / l2
    rdp = ddg_rdp(shares=5, sigma=1000.0, l2=1000.0 * math.sqrt(5) / 1.5, dim=50, orders=orders)
    assert rdp == pytest.approx(orders / (2 * 1.5 ** 2), rel=1e-12)
    small = ddg_rdp(shares=5, sigma=0.6, l2=0.6 * math.sqrt(5) / 1.5, dim=50, orders=orders)
    assert np.all(small > orders / (2 * 1.5 ** 2))


def test_server_view_epsilon_equals_the_unsampled_gaussian_of_the_ledger():
    """Golden: with tau ~ 0 the shares are the Gaussian mechanism with q = 1 (the server knows the cohort)."""
    bits, n, z = 20, 6, 1.0
    release = ShareRelease(shares=n, sigma2=share_variance(noise_std_units=z, bits=bits, shares=n), l2=2.0 ** bits, dim=40)
    event = DpEvent(release_id="r", kind="round", noise_multiplier=z, sample_rate=1.0, count=10, round=1, time=0.0)
    assert server_view_epsilon([release] * 10, delta=1e-5) == pytest.approx(
        compute_epsilon([event], delta=1e-5).epsilon, rel=1e-6)
    assert server_view_epsilon([ShareRelease(shares=0, sigma2=1, l2=1.0, dim=1)], delta=1e-5) == math.inf


def _release(noise_present, seed=0):
    return ToppedUpGaussianSumRelease(noise_present=noise_present, noise_multiplier=2.0, bounds={"A": 3.0, "c": 0.5},
                                      expected_count=4.0, noise=GaussianNoise(secure=False, seed=seed),
                                      symmetric_parts=frozenset({"A"}))


def test_top_up_adds_only_the_missing_noise_and_records_the_total():
    full = 2.0 * math.sqrt(2)
    assert _release(0.0).noise_stds() == pytest.approx({"A": full * 3.0, "c": full * 0.5})
    stds = _release(2.0 * math.sqrt(3 / 5)).noise_stds()  # 3 of 5 shares present
    assert stds == pytest.approx({"A": full * 3.0 * math.sqrt(2 / 5), "c": full * 0.5 * math.sqrt(2 / 5)})
    assert _release(2.0).noise_stds() == {"A": 0.0, "c": 0.0}
    ledger = Ledger()
    event = DpEvent(release_id="round-1", kind="round", noise_multiplier=2.0, sample_rate=0.5, round=1, time=0.0)
    sums = {"A": torch.zeros(30, 30, dtype=torch.float64), "c": torch.zeros(20_000, dtype=torch.float64)}
    out = _release(2.0 * math.sqrt(3 / 5)).release(sums, ledger=ledger, event=event)
    assert ledger.events == (event,)
    assert torch.equal(out["A"], out["A"].T)
    assert (out["c"] * 4.0).std().item() == pytest.approx(stds["c"], rel=0.05)
    with pytest.raises(ValueError, match="noise_present"):
        _release(2.5)
