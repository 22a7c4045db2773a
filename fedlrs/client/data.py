"""The device's data: one user's examples, from the built-in synthetic federation or a file.

Simulation: the node config's ``partition-id`` i picks user i of the synthetic
federation drawn by :func:`fedlrs.simulations.synthetic.make_lrs_data` with
``users = num-partitions`` and the run's ``data-*`` knobs, the same draw the
in-process engine gets for the same seed. Deployment: ``data-path`` in the node
config names a CSV, Parquet or NPZ file with features ``x0 .. x{d-1}`` (or an
``X`` array) and a target ``y``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from fedlrs.core import UserData
from fedlrs.federation_config import FederationConfig
from fedlrs.simulations.synthetic import SyntheticLRS, make_lrs_data


class DataError(ValueError):
    """The node's data cannot be loaded or does not fit the run's config."""


def synthetic_federation(config: FederationConfig, num_users: int) -> SyntheticLRS:
    """The built-in synthetic federation of ``num_users`` users for this run's ``data-*`` knobs."""
    return _synthetic(num_users, config.data_examples, config.dim, config.rank, config.sparsity,
                      config.data_noise, config.data_sparse_scale, config.data_seed)


@functools.lru_cache(maxsize=2)
def _synthetic(users: int, examples: int, dim: int, rank: int, sparsity: int, noise: float,
               sparse_scale: float, seed: int) -> SyntheticLRS:
    # Deterministic in its arguments: a simulated node draws it once per process, not once per user.
    return make_lrs_data(users=users, examples=examples, dim=dim, rank=rank, sparsity=sparsity,
                         noise=noise, sparse_scale=sparse_scale, seed=seed)


def read_table(path: str | Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(X, y)`` of a CSV/Parquet (columns ``x0..x{dim-1}``, ``y``) or NPZ (arrays ``X``, ``y``) file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data-path == '{path}' is not a file.")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path) as archive:
            missing = {"X", "y"} - set(archive.files)
            if missing:
                raise DataError(f"{path}: missing array {sorted(missing)[0]!r}; an NPZ needs 'X' (m, d) and 'y' (m,).")
            X, y = np.asarray(archive["X"], dtype=np.float64), np.asarray(archive["y"], dtype=np.float64)
    elif suffix in (".csv", ".parquet", ".pq"):
        import pandas as pd

        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        columns = [f"x{j}" for j in range(dim)]
        missing = [c for c in columns + ["y"] if c not in frame.columns]
        if missing:
            raise DataError(f"{path}: missing column {missing[0]!r}; need x0..x{dim - 1} and y.")
        X, y = frame[columns].to_numpy(np.float64), frame["y"].to_numpy(np.float64)
    else:
        raise DataError(f"data-path == '{path}' has suffix {suffix!r}, must be .csv, .parquet or .npz.")
    if X.ndim != 2 or X.shape[1] != dim or y.shape != (X.shape[0],):
        raise DataError(f"{path}: X has shape {X.shape} and y {y.shape}, must be (m, {dim}) and (m,).")
    if X.shape[0] == 0:
        raise DataError(f"{path}: no examples; a user needs at least one.")
    if not (np.isfinite(X).all() and np.isfinite(y).all()):
        raise DataError(f"{path}: X or y holds NaN or inf.")
    return X, y


def load_user_data(config: FederationConfig, node_config: Mapping[str, Any]) -> UserData:
    """This node's examples as a batch of one user, in the run's dtype."""
    if config.dataset == "node" or "data-path" in node_config:
        if "data-path" not in node_config:
            raise DataError("dataset == 'node' needs 'data-path' in the node config (flower-supernode --node-config \"data-path='...'\").")
        X, y = read_table(str(node_config["data-path"]), config.dim)
        data = UserData(torch.from_numpy(X)[None], torch.from_numpy(y)[None], torch.ones(1, len(y), dtype=torch.bool))
        return data.to(dtype=config.torch_dtype)
    for key in ("partition-id", "num-partitions"):
        if key not in node_config:
            raise DataError(f"dataset == 'synthetic' needs {key!r} in the node config.")
    index, users = int(node_config["partition-id"]), int(node_config["num-partitions"])
    if not 0 <= index < users:
        raise DataError(f"partition-id == {index}, must be in [0, num-partitions == {users}).")
    train = synthetic_federation(config, users).train
    return train.select(torch.tensor([index])).to(dtype=config.torch_dtype)
