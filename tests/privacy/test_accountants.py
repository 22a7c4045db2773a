import math

import pytest

from fedlrs.privacy.accountants import ACCOUNTANTS, EpsilonResult, compute_epsilon, group_events
from fedlrs.privacy.events import DpEvent
from .helpers import make_event

# N = 1000 users, q = 0.05, z = 1.0, 200 rounds, delta = 1e-5
GOLDEN = {"rdp": 5.37, "prv": 4.77, "pld": 4.77}


def _rounds(n=200, z=1.0, q=0.05):
    return [make_event(f"round-{r}", noise_multiplier=z, sample_rate=q, round=r) for r in range(1, n + 1)]


@pytest.mark.parametrize("accountant", ["rdp", "prv", "pld"])
def test_golden_epsilon(accountant):
    result = compute_epsilon(_rounds(), delta=1e-5, accountant=accountant)
    assert result.accountant_used == accountant and result.warning is None
    assert result.epsilon == pytest.approx(GOLDEN[accountant], rel=0.01)


def test_count_equals_repeated_events():
    one = compute_epsilon([make_event(count=200)], delta=1e-5).epsilon
    many = compute_epsilon(_rounds(), delta=1e-5).epsilon
    assert one == pytest.approx(many, rel=1e-12)


def test_grouping_and_heterogeneous_composition():
    events = [make_event("a", noise_multiplier=2.0, sample_rate=1.0, round=0, kind="init"),
              *_rounds(10)]
    assert group_events(events) == [(2.0, 1.0, 1), (1.0, 0.05, 10)]
    both = compute_epsilon(events, delta=1e-5, accountant="prv").epsilon
    rounds_only = compute_epsilon(events[1:], delta=1e-5, accountant="prv").epsilon
    assert both > rounds_only


def test_tight_accountants_below_rdp():
    events = _rounds(10)
    rdp = compute_epsilon(events, delta=1e-5, accountant="rdp").epsilon
    for accountant in ("prv", "pld"):
        assert compute_epsilon(events, delta=1e-5, accountant=accountant).epsilon < rdp


def test_empty_is_zero():
    assert compute_epsilon([], delta=1e-5, accountant="pld") == EpsilonResult(0.0, 1e-5, "pld", "pld")


def test_prv_falls_back_to_rdp_and_says_so(caplog):
    events = [make_event(noise_multiplier=0.3, sample_rate=1.0, count=20000)]
    result = compute_epsilon(events, delta=1e-5, accountant="prv")
    assert result.fell_back and result.accountant_used == "rdp"
    assert "fell back to RDP" in result.warning and "fell back to RDP" in caplog.text
    assert result.epsilon == compute_epsilon(events, delta=1e-5, accountant="rdp").epsilon
    assert math.isfinite(result.epsilon)


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5, float("nan"), True])
def test_delta_validated(delta):
    with pytest.raises(ValueError, match=r"delta == .*, must be in \(0, 1\)\."):
        compute_epsilon([make_event()], delta=delta)


def test_accountant_validated():
    with pytest.raises(ValueError, match="accountant == 'gdp'"):
        compute_epsilon([make_event()], delta=1e-5, accountant="gdp")


def test_refuses_non_events():
    with pytest.raises(TypeError):
        compute_epsilon([(1.0, 0.05, 1)], delta=1e-5)


@pytest.mark.parametrize("accountant", ["prv", "pld"])
def test_too_many_groups_fall_back(monkeypatch, accountant):
    from fedlrs.privacy import accountants

    monkeypatch.setattr(accountants, "MAX_GROUPS", 1)
    events = [make_event("a", noise_multiplier=2.0), make_event("b", noise_multiplier=3.0)]
    result = compute_epsilon(events, delta=1e-5, accountant=accountant)
    assert result.accountant_used == "rdp" and "distinct (z, q) groups" in result.warning


@pytest.mark.parametrize("z", [1e-160, 1e-300])
@pytest.mark.parametrize("accountant", ACCOUNTANTS)
def test_vanishing_noise_multiplier_is_a_clear_error(z, accountant):
    event = DpEvent(release_id="r", kind="round", noise_multiplier=z, sample_rate=0.5, round=1, time=0.0)
    with pytest.raises(ValueError, match=r"too small to account.*unbounded"):
        compute_epsilon([event], delta=1e-5, accountant=accountant)


def test_tiny_but_accountable_noise_multiplier_gives_huge_epsilon():
    event = DpEvent(release_id="r", kind="round", noise_multiplier=1e-100, sample_rate=1.0, round=1, time=0.0)
    assert compute_epsilon([event], delta=1e-5).epsilon > 1e199
