"""Moved to :mod:`fedlrs.data.ratings` (data live in :mod:`fedlrs.data`); this name is kept for code written before."""

from fedlrs.data.ratings import *  # noqa: F401,F403
