"""Moved to :mod:`fedlrs.data.realdata` (data live in :mod:`fedlrs.data`); this name is kept for code written before."""

from fedlrs.data.realdata import *  # noqa: F401,F403
