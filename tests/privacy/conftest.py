"""Fixtures for the privacy tests."""

from __future__ import annotations

import pytest

from .helpers import make_event


@pytest.fixture
def event_factory():
    """The :func:`make_event` helper, as a fixture."""
    return make_event
