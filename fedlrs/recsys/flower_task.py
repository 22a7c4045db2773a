"""The matrix-completion task on Flower, without Flower: which ratings each device holds, and the task whose parts it clips to.

The server side is :mod:`fedlrs.server.recsys`, the device side :mod:`fedlrs.client.recsys`
(the protocol: :mod:`fedlrs.server.recsys`'s docstring). Selected in a Flower run by the run
config's ``task = "recsys"``; :func:`recsys_task` reads the task from the run config once
(``recsys-*`` keys, and the shared ``num-server-rounds``, ``seed``, ``data-seed``, ``sample-rate`` and privacy keys).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, fields

import numpy as np

from fedlrs.core.sparse import item_statistics
from fedlrs.data.ratings import load_ratings
from fedlrs.privacy.settings import renamed_error

from .model import RecsysConfig, RecsysTask


DATA_SETS = ("movielens", "insteval")
RECSYS = "recsys"  # the run config's task


@dataclass(frozen=True)
class RecsysFlowerTask:
    """Which data each device holds (``data``, ``protocol``, ``seed``, ``max_users``) and the model's :class:`RecsysConfig`."""

    data: str = "movielens"
    protocol: str = "random"
    seed: int = 0
    max_users: int | None = None
    config: RecsysConfig = field(default_factory=RecsysConfig)

    def __post_init__(self) -> None:
        if self.data not in DATA_SETS:
            raise ValueError(f"data == {self.data!r}, must be one of {list(DATA_SETS)}.")
        if self.protocol not in ("random", "time") or (self.protocol == "time" and self.data != "movielens"):
            raise ValueError(f"protocol == {self.protocol!r}, must be 'random' (or 'time', for movielens only).")
        if self.max_users is not None and (isinstance(self.max_users, bool) or not isinstance(self.max_users, int) or self.max_users < 1):
            raise ValueError(f"max_users == {self.max_users!r}, must be None (every user) or an integer >= 1.")
        if self.config.sample_rate != 1.0:
            raise ValueError(f"sample_rate == {self.config.sample_rate}: the Flower recsys task runs every user every round (1.0).")


@functools.lru_cache(maxsize=4)
def ratings_split(data: str, protocol: str, seed: int, max_users: int | None):
    """The task's ratings split (:func:`fedlrs.data.ratings.load_ratings`), loaded once per process."""
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
def device_task(task: RecsysFlowerTask, num_items: int, rating_range) -> RecsysTask:
    """The device's view of the model: the :class:`RecsysTask` whose parts (public bounds) it clips to."""
    return RecsysTask(task.config, num_items, rating_range=rating_range)


#: RecsysFlowerTask field -> the run-config key it comes from (max_users: 0 is every user)
TASK_KEYS = {"data": "recsys-data", "protocol": "recsys-protocol", "seed": "data-seed", "max_users": "recsys-max-users"}
#: RecsysConfig field -> the run-config key it comes from
CONFIG_KEYS = {
    "rounds": "num-server-rounds", "seed": "seed", "sample_rate": "sample-rate", "private": "private", "target_epsilon": "target-epsilon",
    "delta": "delta", "accountant": "accountant", "noise_multiplier": "noise-multiplier", "noise_seed": "noise-seed",
    **{name: "recsys-" + name.replace("_", "-") for name in (
        "rank", "sparsity", "mode", "ridge_w", "ridge_b", "ridge_u", "ridge_user_bias", "ridge_item_bias", "gd_learning_rate", "init_scale",
        "rating_cap", "factor_bound", "residual_bound", "noise_ridge")},
}

_MODEL_DEFAULTS = {f.name: f.default for f in fields(RecsysConfig)}
#: the recsys section of the run config: its own keys (``recsys-*``) and their defaults, those of RecsysFlowerTask and RecsysConfig
RECSYS_DEFAULTS = {
    "recsys-data": RecsysFlowerTask.data,
    "recsys-protocol": RecsysFlowerTask.protocol,
    "recsys-max-users": 0,  # RecsysFlowerTask.max_users None: every user
    **{key: _MODEL_DEFAULTS[name] for name, key in CONFIG_KEYS.items() if key.startswith("recsys-")},
}


@functools.lru_cache(maxsize=8)
def recsys_task(config) -> RecsysFlowerTask:
    """The :class:`RecsysFlowerTask` of a run config with ``task = "recsys"`` (``config``: a frozen
    :class:`~fedlrs.federation_config.FederationConfig`); an error names the run-config key and its rule."""
    if config.task != RECSYS:
        raise ValueError(f"task == {config.task!r}: the recsys handlers answer a run with task == 'recsys' only.")

    def value(key: str):
        return getattr(config, key.replace("-", "_"))

    try:
        model = RecsysConfig(**{name: value(key) for name, key in CONFIG_KEYS.items()})
    except ValueError as error:
        raise renamed_error(error, CONFIG_KEYS) from error
    task = {name: value(key) for name, key in TASK_KEYS.items()}
    if task["max_users"] < 0:
        raise ValueError(f"recsys-max-users == {task['max_users']}, must be >= 0 (0: every user of the data set).")
    task["max_users"] = task["max_users"] or None
    try:
        return RecsysFlowerTask(**task, config=model)
    except ValueError as error:
        raise renamed_error(error, {**TASK_KEYS, "sample_rate": "sample-rate"}) from error
