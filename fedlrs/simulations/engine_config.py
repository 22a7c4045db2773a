"""Moved to :mod:`fedlrs.tasks.linear_config` (the linear task's settings); this name is kept for code written before."""

from fedlrs.tasks.linear_config import DTYPES, EngineConfig  # noqa: F401
