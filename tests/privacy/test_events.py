import dataclasses
import math

import pytest
from hypothesis import given, strategies as st

from fedlrs.privacy.events import (DpEvent, InvalidEventError, accounted_noise_multiplier,
                                   per_part_noise_multiplier)


def test_round_trip(event_factory):
    event = event_factory(count=3, round=7, time=12.5)
    assert DpEvent.from_dict(event.to_dict()) == event


def test_frozen(event_factory):
    with pytest.raises(dataclasses.FrozenInstanceError):
        event_factory().noise_multiplier = 0.1


@pytest.mark.parametrize("field, value, rule", [
    ("noise_multiplier", 0.0, "must be > 0"),
    ("noise_multiplier", float("nan"), "must be finite"),
    ("sample_rate", 1.5, "must be in (0, 1]"),
    ("sample_rate", 0.0, "must be in (0, 1]"),
    ("count", 0, "must be >= 1"),
    ("count", True, "must be an integer"),
    ("round", -1, "must be >= 0"),
    ("kind", "gradient", "must be one of"),
    ("mechanism", "laplace", "must be one of"),
    ("release_id", "", "non-empty"),
    ("time", -1.0, "must be >= 0"),
])
def test_validation_names_field_value_and_rule(event_factory, field, value, rule):
    data = event_factory().to_dict() | {field: value}
    with pytest.raises(InvalidEventError) as info:
        DpEvent.from_dict(data)
    assert f"{field} ==" in str(info.value) and rule in str(info.value)


def test_sample_rate_message_exact(event_factory):
    with pytest.raises(InvalidEventError, match=r"sample_rate == 1\.5, must be in \(0, 1\]\."):
        DpEvent.from_dict(event_factory().to_dict() | {"sample_rate": 1.5})


def test_from_dict_refuses_unknown_and_missing_keys(event_factory):
    data = event_factory().to_dict()
    with pytest.raises(InvalidEventError, match="unknown event key 'epsilon'"):
        DpEvent.from_dict(data | {"epsilon": 1.0})
    del data["sample_rate"]
    with pytest.raises(InvalidEventError, match="missing event key 'sample_rate'"):
        DpEvent.from_dict(data)


def test_numeric_fields_are_keyword_only():
    with pytest.raises(TypeError):
        DpEvent("r", "round", 1.0, 0.05, 1, 1, 0.0)  # type: ignore[misc]


def test_accounted_noise_multiplier_two_parts():
    # two parts, each clipped to its own bound and noised with sigma * C_p:
    # joint sensitivity sqrt(2) after scaling by 1/C_p
    assert accounted_noise_multiplier(noise_std_multiplier=2.0, parts=2) == pytest.approx(2 / math.sqrt(2))
    assert accounted_noise_multiplier(noise_std_multiplier=1.3, parts=1) == 1.3
    with pytest.raises(ValueError, match="parts == 0"):
        accounted_noise_multiplier(noise_std_multiplier=1.0, parts=0)


@given(st.floats(1e-3, 1e3), st.integers(1, 16))
def test_per_part_is_inverse(z, parts):
    sigma = per_part_noise_multiplier(accounted=z, parts=parts)
    assert accounted_noise_multiplier(noise_std_multiplier=sigma, parts=parts) == pytest.approx(z)
