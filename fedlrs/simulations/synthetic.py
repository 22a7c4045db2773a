"""Moved to :mod:`fedlrs.data.synthetic` (data live in :mod:`fedlrs.data`); this name is kept for code written before."""

from fedlrs.data.synthetic import *  # noqa: F401,F403
