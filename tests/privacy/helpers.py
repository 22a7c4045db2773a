"""Shared helpers for the privacy tests."""

from __future__ import annotations

from fedlrs.privacy.events import DpEvent


def make_event(release_id: str = "round-1", *, kind: str = "round", noise_multiplier: float = 1.0,
               sample_rate: float = 0.05, count: int = 1, round: int = 1,
               time: float = 0.0) -> DpEvent:
    """A valid event with overridable fields."""
    return DpEvent(release_id=release_id, kind=kind, noise_multiplier=noise_multiplier,
                   sample_rate=sample_rate, count=count, round=round, time=time)
