"""Moved to :mod:`fedlrs.data.personalized_simulation` (data live in :mod:`fedlrs.data`); this name is kept for code written before."""

from fedlrs.data.personalized_simulation import *  # noqa: F401,F403
