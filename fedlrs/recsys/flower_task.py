"""The matrix-completion task on Flower, without Flower: which ratings each device holds, and the public release bounds.

The server side is :mod:`fedlrs.server.recsys`, the device side :mod:`fedlrs.client.recsys`
(the protocol: :mod:`fedlrs.server.recsys`'s docstring).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from fedlrs.core.sparse import item_statistics
from fedlrs.privacy import Ledger

from .data import load_ratings
from .model import RecsysConfig, _PrivateRelease


@dataclass(frozen=True)
class RecsysFlowerTask:
    """Which data each device holds (``data``, ``protocol``, ``seed``, ``max_users``) and the model's :class:`RecsysConfig`."""

    data: str = "movielens"
    protocol: str = "random"
    seed: int = 0
    max_users: int | None = None
    config: RecsysConfig = field(default_factory=RecsysConfig)

    def __post_init__(self) -> None:
        if self.config.sample_rate != 1.0:
            raise ValueError(f"sample_rate == {self.config.sample_rate}: the Flower recsys task runs every user every round (1.0).")


@functools.lru_cache(maxsize=4)
def ratings_split(data: str, protocol: str, seed: int, max_users: int | None):
    """The task's ratings split (:func:`fedlrs.recsys.data.load_ratings`), loaded once per process."""
    return load_ratings(data, protocol=protocol, seed=seed, max_users=max_users)


def device_ratings(task: RecsysFlowerTask, partition_id: int):
    """The :class:`ItemStats` (one user) of device ``partition_id`` and the public (d, rating range)."""
    split = ratings_split(task.data, task.protocol, task.seed, task.max_users)
    if not 0 <= partition_id < split.num_users:
        raise ValueError(f"partition-id == {partition_id}, must be in [0, {split.num_users}) (one device per user).")
    rows = split.train_full
    mine = rows.users == partition_id
    stats = item_statistics(np.zeros(int(mine.sum()), dtype=np.int64), rows.items[mine], rows.ratings[mine], num_users=1, num_items=split.num_items)
    return stats, split.num_items, split.rating_range


@functools.lru_cache(maxsize=4)
def device_release(task: RecsysFlowerTask, rating_range) -> _PrivateRelease | None:
    """The device's view of the release: its public bounds (z is calibrated once per process)."""
    return _PrivateRelease(task.config, rating_range, Ledger()) if task.config.private else None
