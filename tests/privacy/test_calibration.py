import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fedlrs.privacy.accountants import compute_epsilon
from fedlrs.privacy.calibration import CalibrationError, calibrate_noise_multiplier
from .helpers import make_event


def _eps(z, *, q, rounds, delta, prior=(), accountant="rdp"):
    planned = make_event("planned", noise_multiplier=z, sample_rate=q, count=rounds)
    return compute_epsilon([*prior, planned], delta=delta, accountant=accountant).epsilon


def test_golden_calibration():
    z = calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-5, sample_rate=0.05, rounds=200)
    assert z == pytest.approx(1.79, abs=0.01)
    assert 1.95 <= _eps(z, q=0.05, rounds=200, delta=1e-5) <= 2.0


def test_prior_events_need_more_noise():
    prior = [make_event("init", kind="init", noise_multiplier=5.0, sample_rate=1.0, round=0)]
    alone = calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-5, sample_rate=0.05, rounds=200)
    with_init = calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-5, sample_rate=0.05,
                                           rounds=200, prior_events=prior)
    assert with_init > alone
    assert _eps(with_init, q=0.05, rounds=200, delta=1e-5, prior=prior) <= 2.0


def test_prior_events_over_target_refused():
    prior = [make_event("init", kind="init", noise_multiplier=0.3, sample_rate=1.0, round=0)]
    with pytest.raises(CalibrationError, match="prior events already spend"):
        calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-5, sample_rate=0.05, rounds=10,
                                   prior_events=prior)


def test_keyword_only_and_validated():
    with pytest.raises(TypeError):
        calibrate_noise_multiplier(2.0, 1e-5, 0.05, 200)  # type: ignore[misc]
    with pytest.raises(ValueError, match=r"sample_rate == 1\.5, must be in \(0, 1\]\."):
        calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-5, sample_rate=1.5, rounds=10)
    with pytest.raises(ValueError, match="rounds == 0"):
        calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-5, sample_rate=0.5, rounds=0)


# each calibration costs ~8 RDP evaluations of 0.02-0.5 s (Opacus' fractional orders are slow
# for large q): a dozen examples in the federated regime q <= 0.1, not hundreds
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=st.floats(0.3, 12.0), q=st.floats(0.001, 0.1), rounds=st.integers(1, 1000),
       delta=st.sampled_from([1e-3, 1e-5, 1e-7]))
def test_calibration_never_overshoots(target, q, rounds, delta):
    z = calibrate_noise_multiplier(target_epsilon=target, delta=delta, sample_rate=q,
                                   rounds=rounds, tolerance=0.05)
    assert _eps(z, q=q, rounds=rounds, delta=delta) <= target
    # and is tight: 6% less noise misses the target (unless z hit the floor)
    if z > 2e-3:
        assert _eps(z * 0.94, q=q, rounds=rounds, delta=delta) > target


@pytest.mark.slow
def test_calibration_pld_never_overshoots():
    z = calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-5, sample_rate=0.05, rounds=200,
                                   accountant="pld")
    assert z < calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-5, sample_rate=0.05, rounds=200)
    assert _eps(z, q=0.05, rounds=200, delta=1e-5, accountant="pld") <= 2.0


def test_joint_calibration_with_the_init_release_never_overshoots():
    from fedlrs.privacy import DpEvent, compute_epsilon

    z = calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-5, sample_rate=0.05, rounds=50, init_ratio=1.0)
    init = DpEvent(release_id="init", kind="init", noise_multiplier=z, sample_rate=1.0, round=0, time=0.0)
    rounds = DpEvent(release_id="rounds", kind="round", noise_multiplier=z, sample_rate=0.05, count=50, round=1, time=0.0)
    spent = compute_epsilon([init, rounds], delta=1e-5, accountant="rdp").epsilon
    assert 1.95 <= spent <= 2.0
    assert z > calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-5, sample_rate=0.05, rounds=50)
    with pytest.raises(ValueError, match="init_ratio == -1"):
        calibrate_noise_multiplier(target_epsilon=2.0, delta=1e-5, sample_rate=0.05, rounds=5, init_ratio=-1)
